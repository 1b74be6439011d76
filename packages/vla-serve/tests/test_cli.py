"""`vla-serve client` runs the async loop against a live server; the parser exposes both commands."""

from __future__ import annotations

import json

import pytest

from vla_serve.cli import build_parser, main
from vla_serve.server import PolicyServer


@pytest.mark.parametrize("mode", ["sync", "naive", "rtc"])
def test_client_command_against_a_server(
    server: PolicyServer, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"ws://127.0.0.1:{server.port}"
    argv = ["client", "--uri", uri, "--mode", mode, "--hz", "200", "--steps", "12"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == mode
    # Execution horizon 4 (n_action_steps): requests at steps 0, 4 (, 8 once the 2nd reply is in).
    assert report["requests"] >= 2
    assert report["delays_steps"][0] == 0  # the first chunk is waited for
    if mode == "sync":
        assert set(report["delays_steps"]) == {0}


def test_serve_parser_knows_both_policy_kinds() -> None:
    parser = build_parser()
    imf = parser.parse_args(["serve", "imf", "run_dir", "--steps", "4", "--port", "0"])
    assert (imf.kind, imf.steps, imf.port, imf.rtc_schedule) == ("imf", 4, 0, "exp")
    pi0 = parser.parse_args(
        ["serve", "pi0", "--config", "c.json", "--weights", "w.safetensors", "--norm-stats",
         "n.json", "--cameras", "a,b", "--layout", "openpi"]
    )  # fmt: skip
    assert (pi0.kind, pi0.layout, pi0.cameras) == ("pi0", "openpi", "a,b")
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "pi0", "--config", "c.json", "--layout", "jax"])
