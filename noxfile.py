"""The CI matrix. `uv run nox` runs every default session; `uv run nox -s tests-vla-prune` runs one.

Each `tests-<package>` session syncs a fresh venv holding only that package and its `test`
dependency group from the committed lock, which is what proves a package works alone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = ["vla-prune", "vla-core", "vla-imf", "vla-convert", "vla-train", "vla-serve"]
DEFAULT_PYTHON = "3.11"
# Light packages get a Python-version matrix; the heavy ones run on the default interpreter.
PYTHON_MATRIX = {"vla-prune": ["3.11", "3.12", "3.13"]}
# Modules that must not be importable in a package's standalone test venv.
FORBIDDEN_IN_VENV = {
    "vla-prune": [
        "transformers",
        "jax",
        "hydra",
        "vla_core",
        "vla_imf",
        "vla_convert",
        "vla_train",
    ],
    "vla-core": ["jax", "hydra", "vla_prune", "vla_imf", "vla_convert", "vla_train"],
    "vla-imf": ["jax", "hydra", "vla_prune", "vla_convert", "vla_train"],
    "vla-convert": ["hydra", "vla_prune", "vla_imf", "vla_train"],
    "vla-serve": ["jax", "hydra", "gym_pusht", "vla_convert", "vla_train"],
}

# Session venvs are fresh, so let Python cache bytecode there: otherwise every test process (DDP
# workers included) recompiles torch's sources on import.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "no"
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))


def _uv_sync(session: nox.Session, *args: str) -> None:
    """`uv sync --locked` into the session's own venv (not the workspace .venv)."""
    env = {"UV_PROJECT_ENVIRONMENT": session.virtualenv.location}
    python = str(Path(session.virtualenv.location) / "bin" / "python")
    session.run_install("uv", "sync", "--locked", "--python", python, *args, env=env)


def _assert_absent(session: nox.Session, modules: list[str]) -> None:
    code = (
        "import importlib.util, sys\n"
        f"present = [m for m in {modules!r} if importlib.util.find_spec(m) is not None]\n"
        "sys.exit(f'standalone venv must not contain: {present}' if present else 0)\n"
    )
    session.run("python", "-c", code)


def _make_tests_session(package: str) -> None:
    pythons = PYTHON_MATRIX.get(package, [DEFAULT_PYTHON])

    @nox.session(name=f"tests-{package}", python=pythons)
    def tests(session: nox.Session) -> None:
        _uv_sync(session, "--package", package, "--group", "test", "--no-default-groups")
        if package in FORBIDDEN_IN_VENV:
            _assert_absent(session, FORBIDDEN_IN_VENV[package])
        session.run(
            "python",
            "-m",
            "pytest",
            f"packages/{package}/tests",
            *session.posargs,
            env={"MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"},
        )


for _package in PACKAGES:
    _make_tests_session(_package)


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    _uv_sync(session, "--only-group", "dev")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=DEFAULT_PYTHON)
def types(session: nox.Session) -> None:
    # Every group but the test groups: vla-serve's (openpi-client, numpy<2) conflicts with
    # vla-convert / vla-train by design (see [tool.uv] conflicts in pyproject.toml).
    _uv_sync(session, "--all-packages", "--all-groups", "--no-group", "test")
    session.run("mypy", *[f"packages/{p}/src" for p in PACKAGES])


@nox.session(python=DEFAULT_PYTHON)
def contracts(session: nox.Session) -> None:
    """import-linter over the sources, plus the metadata-vs-imports DAG test."""
    _uv_sync(session, "--only-group", "dev")
    src_path = os.pathsep.join(str(ROOT / "packages" / p / "src") for p in PACKAGES)
    session.run("lint-imports", env={"PYTHONPATH": src_path})
    session.run("python", "-m", "pytest", "tests", *session.posargs)


@nox.session(python=False)
def lock(session: nox.Session) -> None:
    session.run_install("uv", "lock", "--check", external=True)


@nox.session(python=DEFAULT_PYTHON)
def wheels(session: nox.Session) -> None:
    """Build every package; install the vla-prune wheel with plain pip beside nothing but torch."""
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("uv", "build", "--all-packages", "--out-dir", str(dist), external=True)
    built = sorted(p.name for p in dist.glob("*.whl"))
    session.log(f"built: {built}")
    for package in PACKAGES:
        name = package.replace("-", "_")
        if not any(w.startswith(f"{name}-0.") for w in built):
            session.error(f"no wheel built for {package}")

    venv = Path(session.create_tmp()) / "pip-venv"
    shutil.rmtree(venv, ignore_errors=True)
    session.run("python", "-m", "venv", str(venv))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    session.run(*pip, "install", "--quiet", "torch", external=True)
    (wheel,) = dist.glob("vla_prune-*.whl")
    session.run(*pip, "install", "--quiet", str(wheel), external=True)
    smoke = ROOT / ".ci" / "smoke_vla_prune.py"
    session.run(str(venv / "bin" / "python"), str(smoke), external=True)
