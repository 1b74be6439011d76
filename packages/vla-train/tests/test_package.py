"""Pins the package's identity: version from installed metadata, and its sibling imports."""

import importlib.metadata

import vla_train


def test_version_comes_from_metadata() -> None:
    assert vla_train.__version__ == importlib.metadata.version("vla-train")
    assert vla_train.__version__.count(".") == 2


def test_cli_exits_nonzero_with_a_message_when_nothing_can_run(capsys) -> None:
    from vla_train import cli

    assert cli.main([]) == 2
    assert "no experiment" in capsys.readouterr().err
