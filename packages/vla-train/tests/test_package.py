"""Pins the package's identity: version from installed metadata, and its sibling imports."""

import importlib.metadata

import vla_train


def test_version_comes_from_metadata() -> None:
    assert vla_train.__version__ == importlib.metadata.version("vla-train")
    assert vla_train.__version__.count(".") == 2


def test_console_scripts_point_at_the_hydra_app_and_the_report() -> None:
    scripts = {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.name.startswith("vla-train")
    }
    assert scripts == {
        "vla-train": "vla_train.cli:main",
        "vla-train-report": "vla_train.report:main",
    }
