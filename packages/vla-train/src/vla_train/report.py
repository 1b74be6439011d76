"""`vla-train-report SWEEP_DIR`: collect the runs of a sweep into a table and a heatmap.

Every run directory below SWEEP_DIR that holds a `metrics.json` (written by the trainer at the
end of a run) is one row. Runs sharing (policy tag, n_emb, n_layer) are averaged over seeds.
Writes `report.md` (markdown table), `runs.csv` and `heatmap_<metric>.png` (one panel per policy
tag, n_layer rows x n_emb columns).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_train.atomic import atomic_write_bytes, atomic_write_text

METRICS = ("success_rate", "mean_max_coverage", "mean_score")


@dataclass(frozen=True)
class RunRecord:
    run_name: str
    tag: str
    n_emb: int
    n_layer: int
    seed: int
    steps: int
    success_rate: float
    mean_max_coverage: float
    mean_score: float
    train_wall_s: float
    action_latency_ms: float


def collect_runs(sweep_dir: Path) -> list[RunRecord]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
    records = []
    for path in sorted(sweep_dir.rglob("metrics.json")):
        m = json.loads(path.read_text())
        try:
            records.append(
                RunRecord(
                    run_name=str(m["run_name"]),
                    tag=str(m["policy"]["tag"]),
                    n_emb=int(m["policy"]["n_emb"]),
                    n_layer=int(m["policy"]["n_layer"]),
                    seed=int(m["seed"]),
                    steps=int(m["steps"]),
                    success_rate=float(m["eval"]["success_rate"]),
                    mean_max_coverage=float(m["eval"]["mean_max_coverage"]),
                    mean_score=float(m["eval"]["mean_score"]),
                    train_wall_s=float(m["train_wall_s"]),
                    action_latency_ms=float(m["action_latency_ms_batch1"]),
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a vla-train metrics.json ({e!r})") from e
    return records


def _grid(records: list[RunRecord], metric: str) -> dict[str, dict[tuple[int, int], list[float]]]:
    grid: dict[str, dict[tuple[int, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        grid[r.tag][(r.n_emb, r.n_layer)].append(float(getattr(r, metric)))
    return grid


def markdown_table(records: list[RunRecord]) -> str:
    rows = [
        "| run | policy | n_emb | n_layer | seed | steps | success | max-coverage | score "
        "| train s | latency ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(records, key=lambda r: (r.tag, r.n_emb, r.n_layer, r.seed)):
        rows.append(
            f"| {r.run_name} | {r.tag} | {r.n_emb} | {r.n_layer} | {r.seed} | {r.steps} "
            f"| {r.success_rate:.3f} | {r.mean_max_coverage:.3f} | {r.mean_score:.3f} "
            f"| {r.train_wall_s:.0f} | {r.action_latency_ms:.2f} |"
        )
    return "\n".join(rows) + "\n"


def plot_heatmap(records: list[RunRecord], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = _grid(records, metric)
    tags = sorted(grid)
    fig, axes = plt.subplots(1, len(tags), figsize=(4.5 * len(tags), 4), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        cells = grid[tag]
        embs = sorted({e for e, _ in cells})
        layers = sorted({layer for _, layer in cells})
        values = np.full((len(layers), len(embs)), np.nan)
        for (e, layer), vals in cells.items():
            values[layers.index(layer), embs.index(e)] = float(np.mean(vals))
        im = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(embs)), [str(e) for e in embs])
        ax.set_yticks(range(len(layers)), [str(x) for x in layers])
        ax.set_xlabel("n_emb")
        ax.set_ylabel("n_layer")
        ax.set_title(f"{tag}: {metric}")
        for i in range(len(layers)):
            for j in range(len(embs)):
                if not np.isnan(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", color="w")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_report(
    sweep_dir: Path, out_dir: Path | None = None, metric: str = "success_rate"
) -> dict[str, Path]:
    """Collect `sweep_dir` and write report.md, runs.csv and the heatmap into `out_dir`
    (default: the sweep directory). Returns the written paths."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    records = collect_runs(sweep_dir)
    if not records:
        raise FileNotFoundError(f"no metrics.json below {sweep_dir}: not a vla-train sweep")
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "report.md"
    atomic_write_text(table, f"# Sweep {Path(sweep_dir).name}\n\n" + markdown_table(records))
    csv_path = out / "runs.csv"
    rows = io.StringIO(newline="")
    writer = csv.writer(rows)
    fields = list(RunRecord.__dataclass_fields__)
    writer.writerow(fields)
    for r in records:
        writer.writerow([getattr(r, k) for k in fields])
    atomic_write_text(csv_path, rows.getvalue())
    heatmap = out / f"heatmap_{metric}.png"
    plot_heatmap(records, metric, heatmap)
    return {"table": table, "csv": csv_path, "heatmap": heatmap}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vla-train-report", description="Collect a vla-train sweep into a table + heatmap."
    )
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: sweep_dir)")
    parser.add_argument("--metric", default="success_rate", choices=METRICS)
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.sweep_dir, args.out, args.metric)
    except (FileNotFoundError, ValueError) as e:
        print(f"vla-train-report: {e}", file=sys.stderr)
        return 2
    print(paths["table"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
