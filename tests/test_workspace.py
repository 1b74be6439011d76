"""Pins the workspace's dependency DAG: declared sibling dependencies must match what the code imports
and what the architecture allows (see ../shared/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["vla-prune", "vla-core", "vla-imf", "vla-convert", "vla-train", "vla-serve"]

# Which siblings each package may declare (and therefore import).
ALLOWED: dict[str, set[str]] = {
    "vla-prune": set(),
    "vla-core": set(),
    "vla-imf": {"vla-core"},
    "vla-convert": {"vla-core"},
    "vla-train": {"vla-core", "vla-prune", "vla-imf"},
    "vla-serve": {"vla-core", "vla-imf", "vla-prune"},
}


def _requirement_name(requirement: str) -> str:
    name = requirement
    for stop in "<>=!~;[ (":
        name = name.split(stop, 1)[0]
    return name.strip().lower().replace("_", "-")


def declared_siblings(pyproject: dict) -> set[str]:
    """Sibling packages named in `[project].dependencies` (optional extras count too)."""
    requirements = list(pyproject["project"].get("dependencies", []))
    for extra in pyproject["project"].get("optional-dependencies", {}).values():
        requirements += extra
    return {_requirement_name(r) for r in requirements} & set(PACKAGES)


def imported_siblings(src: Path, own: str) -> set[str]:
    """Sibling packages imported anywhere under `src` (absolute imports, found with ast)."""
    modules = {p.replace("-", "_"): p for p in PACKAGES}
    found: set[str] = set()
    for path in src.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".", 1)[0]
                if top in modules and modules[top] != own:
                    found.add(modules[top])
    return found


def dag_violations(package: str, declared: set[str], imported: set[str]) -> list[str]:
    problems = []
    for name in sorted(declared - ALLOWED[package]):
        problems.append(f"{package} declares {name}, which the DAG forbids")
    for name in sorted(imported - declared):
        problems.append(f"{package} imports {name} without declaring it")
    return problems


@pytest.mark.parametrize("package", PACKAGES)
def test_metadata_matches_dag(package: str) -> None:
    directory = ROOT / "packages" / package
    pyproject = tomllib.loads((directory / "pyproject.toml").read_text())
    declared = declared_siblings(pyproject)
    imported = imported_siblings(directory / "src", package)
    assert dag_violations(package, declared, imported) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_workspace_sources_for_siblings(package: str) -> None:
    """Every declared sibling resolves from the workspace, not from an index."""
    pyproject = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())
    sources = pyproject.get("tool", {}).get("uv", {}).get("sources", {})
    for sibling in declared_siblings(pyproject):
        assert sources.get(sibling) == {"workspace": True}, f"{package}: {sibling} source"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_layout(package: str) -> None:
    directory = ROOT / "packages" / package
    pyproject = tomllib.loads((directory / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == package
    assert pyproject["project"]["requires-python"] == ">=3.11"
    assert "test" in pyproject["dependency-groups"]
    for path in ["README.md", "CHANGELOG.md", "tests", "benchmarks"]:
        assert (directory / path).exists(), f"{package} lacks {path}"
    assert (directory / "src" / package.replace("-", "_") / "__init__.py").is_file()


def test_checker_catches_undeclared_import(tmp_path: Path) -> None:
    """The checker must fail on a sibling import that is not declared (e.g. vla_train in vla_core)."""
    (tmp_path / "vla_core").mkdir()
    (tmp_path / "vla_core" / "bad.py").write_text("import vla_train.cli\nfrom vla_core import x\n")
    imported = imported_siblings(tmp_path, "vla-core")
    assert imported == {"vla-train"}
    assert dag_violations("vla-core", set(), imported) == [
        "vla-core imports vla-train without declaring it"
    ]


def test_checker_catches_forbidden_declaration() -> None:
    pyproject = {"project": {"dependencies": ["torch>=2.6", "vla-train", "vla_imf>=0.1"]}}
    declared = declared_siblings(pyproject)
    assert declared == {"vla-train", "vla-imf"}
    assert dag_violations("vla-convert", declared, set()) == [
        "vla-convert declares vla-imf, which the DAG forbids",
        "vla-convert declares vla-train, which the DAG forbids",
    ]


# Import name -> distribution name, where they differ.
DISTRIBUTION_OF_IMPORT = {
    "PIL": "pillow",
    "gym_pusht": "gym-pusht",
    "hydra": "hydra-core",
    "orbax": "orbax-checkpoint",
}
# Imports a package may make without declaring them: probed with importlib first, never installable
# from the lock (flash-attn builds against the local CUDA toolkit).
UNDECLARED_OPTIONAL: dict[str, set[str]] = {"vla-core": {"flash_attn"}}


def declared_distributions(pyproject: dict) -> set[str]:
    """Every distribution in `[project].dependencies` and the optional extras."""
    requirements = list(pyproject["project"].get("dependencies", []))
    for extra in pyproject["project"].get("optional-dependencies", {}).values():
        requirements += extra
    return {_requirement_name(r) for r in requirements}


def imported_third_party(src: Path) -> dict[str, set[str]]:
    """Distribution -> files under `src` that import it (absolute imports outside the standard
    library and the workspace, module-level and function-level alike)."""
    own = {p.replace("-", "_") for p in PACKAGES}
    found: dict[str, set[str]] = {}
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".", 1)[0]
                if top in sys.stdlib_module_names or top in own or top == "__future__":
                    continue
                distribution = DISTRIBUTION_OF_IMPORT.get(top, top).lower().replace("_", "-")
                found.setdefault(distribution, set()).add(path.relative_to(src).as_posix())
    return found


def undeclared_imports(
    package: str, declared: set[str], imported: dict[str, set[str]]
) -> list[str]:
    allowed = {
        DISTRIBUTION_OF_IMPORT.get(m, m).replace("_", "-")
        for m in UNDECLARED_OPTIONAL.get(package, set())
    }
    return [
        f"{package} imports {name} (in {sorted(files)}) without declaring it"
        for name, files in sorted(imported.items())
        if name not in declared and name not in allowed
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_third_party_imports_are_declared(package: str) -> None:
    """Every third-party package a package's sources import is in its own pyproject (a transitive
    dependency through a sibling does not count: the sibling may drop it)."""
    directory = ROOT / "packages" / package
    pyproject = tomllib.loads((directory / "pyproject.toml").read_text())
    imported = imported_third_party(directory / "src" / package.replace("-", "_"))
    assert undeclared_imports(package, declared_distributions(pyproject), imported) == []


def test_third_party_checker_catches_undeclared_import(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        "import os\nimport numpy as np\nfrom PIL import Image\nfrom vla_core import x\n"
        "def f():\n    import transformers.utils\n"
    )
    imported = imported_third_party(tmp_path)
    assert imported == {"numpy": {"a.py"}, "pillow": {"a.py"}, "transformers": {"a.py"}}
    assert undeclared_imports("vla-train", {"numpy", "pillow"}, imported) == [
        "vla-train imports transformers (in ['a.py']) without declaring it"
    ]


def test_lock_is_committed_and_pins_torch_from_pypi() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (torch,) = [p for p in lock["package"] if p["name"] == "torch"]
    assert torch["source"] == {"registry": "https://pypi.org/simple"}
