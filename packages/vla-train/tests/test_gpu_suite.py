"""Pins `benchmarks/gpu_suite.py --tiny` (issue #21) so the GPU suite cannot rot while no GPU is
lent: every section runs on tiny configs, the JSON holds every row with status 'ok' (CUDA-graph
rows 'skipped' without CUDA, with the reason), the compiled sampler's actions equal eager ones
(fp32 ≤ 1e-5 on CPU), and the markdown table lists every row. No timing is asserted."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SAMPLING = ["eager", "compiled", "cuda_graph"]
EXPECTED_ROWS = [
    *[f"sampling/{variant}/{mode}" for variant in ("pi0", "pi05") for mode in SAMPLING],
    "finetune/pi05/no_checkpointing",
    "finetune/pi05/checkpointing",
    "imf/attnres_full_imf/lowdim",
    "imf/attnres_full_imf/image",
    *[f"pruned/pi05_keep0.1/{mode}" for mode in SAMPLING],
]


def test_tiny_suite_writes_every_row(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    suite = importlib.import_module("gpu_suite")
    out = tmp_path / "suite.json"
    suite.main(["--tiny", "--out", str(out)])
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    assert list(rows) == EXPECTED_ROWS
    cuda = torch.cuda.is_available()
    for key, row in rows.items():
        if key.endswith("/cuda_graph") and not cuda:
            assert row == {"status": "skipped", "reason": "needs CUDA (CUDA graphs)"}, key
            continue
        assert row["status"] == "ok", (key, row)
        assert (row.get("latency_ms") or row.get("step_ms") or 0) > 0, key
    for key in ("sampling/pi0/compiled", "sampling/pi05/compiled", "pruned/pi05_keep0.1/compiled"):
        tolerance = 1e-5 if not cuda else 1e-1  # CUDA: bf16 + inductor
        assert rows[key]["max_abs_diff_vs_eager"] <= tolerance, key
    assert (
        rows["sampling/pi0/eager"]["flops"] > 0
        and rows["pruned/pi05_keep0.1/eager"]["flops"] is None
    )
    assert payload["meta"]["tiny"] is True and set(payload["sections"]) == {
        "sampling", "pruned", "finetune", "imf"
    }  # fmt: skip
    table = out.with_suffix(".md").read_text()
    assert "TINY SMOKE RUN" in table
    assert all(f"| {key} |" in table for key in EXPECTED_ROWS)
    sys.modules.pop("gpu_suite", None)
    sys.modules.pop("_suite", None)
