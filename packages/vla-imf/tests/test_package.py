"""Pins the package's identity: version from installed metadata, and its sibling imports."""

import importlib.metadata
import sys

import vla_imf


def test_version_comes_from_metadata() -> None:
    assert vla_imf.__version__ == importlib.metadata.version("vla-imf")
    assert vla_imf.__version__.count(".") == 2


def test_import_pulls_in_no_forbidden_sibling() -> None:
    forbidden = ["vla_prune", "vla_convert", "vla_train"]
    leaked = [name for name in forbidden if name in sys.modules]
    assert leaked == [], f"importing vla_imf imported {leaked}"
