"""Pins `vla-train-report` on a fake sweep directory: every metrics.json becomes a row, seeds are
averaged per (policy, n_emb, n_layer) cell of the heatmap, and bad input fails with a message."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from vla_train import report


def _fake_run(root: Path, tag: str, emb: int, layer: int, seed: int, success: float) -> None:
    run = root / f"{tag}_emb{emb}_layer{layer}_seed{seed}"
    run.mkdir(parents=True)
    metrics = {
        "run_name": run.name,
        "policy": {"tag": tag, "n_emb": emb, "n_layer": layer},
        "seed": seed,
        "steps": 100,
        "train_wall_s": 12.0,
        "action_latency_ms_batch1": 1.5,
        "eval": {
            "success_rate": success,
            "mean_max_coverage": 0.5 + success / 2,
            "mean_score": 0.7,
        },
    }
    (run / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for emb in (64, 128):
        for layer in (2, 4):
            _fake_run(root, "imf_attnres", emb, layer, 0, emb / 1000 + layer / 10)
    _fake_run(root, "imf_attnres", 64, 2, 1, 0.464)  # second seed of one cell
    (root / "multirun.yaml").write_text("not a run\n")
    return root


def test_report_writes_table_csv_and_heatmap(sweep: Path, tmp_path: Path) -> None:
    paths = report.write_report(sweep, tmp_path / "out")
    table = paths["table"].read_text()
    assert table.count("| imf_attnres_emb") == 5
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and {r["n_emb"] for r in rows} == {"64", "128"}
    png = paths["heatmap"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    grid = report._grid(report.collect_runs(sweep), "success_rate")
    assert grid["imf_attnres"][(64, 2)] == pytest.approx([0.264, 0.464])  # both seeds kept
    assert grid["imf_attnres"][(128, 4)] == pytest.approx([0.528])


def test_cli_prints_the_table_and_fails_cleanly(sweep: Path, tmp_path: Path, capsys) -> None:
    assert report.main([str(sweep), "--metric", "mean_max_coverage"]) == 0
    out = capsys.readouterr().out
    assert "imf_attnres_emb128_layer4_seed0" in out and "heatmap" in out
    assert (sweep / "heatmap_mean_max_coverage.png").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty)]) == 2
    assert "no metrics.json" in capsys.readouterr().err
    bad = tmp_path / "bad" / "run"
    bad.mkdir(parents=True)
    (bad / "metrics.json").write_text(json.dumps({"run_name": "x"}))
    assert report.main([str(tmp_path / "bad")]) == 2
    assert "not a vla-train metrics.json" in capsys.readouterr().err


def test_report_mode_of_the_hydra_app(sweep: Path, tmp_path: Path) -> None:
    from vla_train._testing import compose_config
    from vla_train.cli import run

    cfg = compose_config(["experiment=report", f"report.sweep_dir={sweep}"])
    paths = run(cfg, tmp_path)
    assert Path(paths["heatmap"]).is_file()
