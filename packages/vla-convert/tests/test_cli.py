"""`vla-convert openpi ...`: a real conversion with --verify, its summary, and error exits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vla_convert._testing import random_openpi_params, tiny_dims, write_openpi_checkpoint
from vla_convert.cli import main
from vla_core.state_dict import load_pretrained


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dims = tiny_dims(pi05=True, lora_rank=4)
    root = tmp_path_factory.mktemp("cli")
    return write_openpi_checkpoint(
        root / "run" / "2999",
        random_openpi_params(dims, seed=2),
        value_suffix=True,
        norm_stats={"actions": {"mean": [0.0] * 6}},
    )


def test_cli_converts_verifies_and_summarises(
    lora_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pi05_vla"
    argv = ["openpi", "--checkpoint-dir", str(lora_checkpoint), "--variant", "pi05"]
    argv += ["--lora-rank", "4", "--lora-alpha", "8", "--lora-rslora", "--out", str(out)]
    argv += ["--verify", "--no-progress", "--action-horizon", "5"]
    assert main(argv) == 0
    report = capsys.readouterr().out
    assert "merged LoRA modules: 10" in report and "verify: max |Δ|" in report
    worst = float(report.split("verify: max |Δ| = ")[1].split()[0])
    assert worst < 1e-4
    record = json.loads((out / "conversion.json").read_text())
    assert record["lora"]["action_expert"] == {
        "attn": {"rank": 4, "alpha": 8.0, "rslora": True, "scale": 4.0},
        "ffn": {"rank": 4, "scale": 1.0},
    }
    assert record["dtype"] == "float32" and record["value_suffixed"] is True
    assert (out / "assets" / "trossen" / "norm_stats.json").is_file()
    model = load_pretrained(out)
    assert model.config.action_horizon == 5 and model.config.variant == "pi05"


def test_cli_openpi_layout(lora_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "openpi"
    argv = ["openpi", "--checkpoint-dir", str(lora_checkpoint), "--out", str(out), "--layout"]
    argv += ["openpi", "--lora-rank", "4", "--lora-alpha", "4", "--no-progress"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["pi05"] is True and config["action_dim"] == 6


def test_cli_errors_exit_nonzero_with_named_cause(
    lora_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    base = ["openpi", "--checkpoint-dir", str(lora_checkpoint), "--out", str(out), "--no-progress"]
    assert main(base) == 1
    assert "LoraConfigError" in capsys.readouterr().err
    assert main([*base, "--variant", "pi0", "--lora-rank", "4", "--lora-alpha", "4"]) == 1
    assert "is pi05" in capsys.readouterr().err
    assert main([*base, "--lora-rank", "4"]) == 1  # rank alone: alpha still unknown
    assert "alpha / rslora are not stored" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--lora", "tower=head,alpha=2"])
    assert exit_info.value.code == 2
    assert "LoRA tower must be one of" in capsys.readouterr().err
    assert not out.exists()
