"""Pins the package's identity: version from installed metadata, and its sibling imports."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import vla_imf

WORKSPACE = Path(__file__).resolve().parents[3]


def test_version_comes_from_metadata() -> None:
    assert vla_imf.__version__ == importlib.metadata.version("vla-imf")
    assert vla_imf.__version__.count(".") == 2


FORBIDDEN = ["vla_prune", "vla_convert", "vla_train"]


def _fresh_interpreter(code: str) -> dict[str, tuple[bool, bool]]:
    """Run `code` in a clean interpreter whose path holds every workspace package's sources, so a
    forbidden sibling would be importable (the test fails if `vla_imf` imports one), and report per
    sibling whether it can be found and whether it was imported."""
    sources = [str(path) for path in sorted(WORKSPACE.glob("packages/*/src"))]
    probe = (
        "import importlib.util, json, sys\n"
        f"found = {{m: importlib.util.find_spec(m) is not None for m in {FORBIDDEN!r}}}\n"
        f"{code}\n"
        "print(json.dumps({m: [found[m], m in sys.modules] for m in found}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sources)}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    return {
        name: tuple(state) for name, state in json.loads(result.stdout.splitlines()[-1]).items()
    }


def test_import_pulls_in_no_forbidden_sibling() -> None:
    state = _fresh_interpreter("import vla_imf")
    assert all(found for found, _ in state.values()), f"siblings not on the path: {state}"
    leaked = [name for name, (_, imported) in state.items() if imported]
    assert leaked == [], f"importing vla_imf imported {leaked}"


def test_forbidden_import_check_detects_a_leak() -> None:
    """The probe sees a sibling module that is present in `sys.modules` (planted by hand)."""
    state = _fresh_interpreter(
        "import vla_imf, sys, types\nsys.modules['vla_prune'] = types.ModuleType('vla_prune')"
    )
    assert state["vla_prune"] == (True, True)
