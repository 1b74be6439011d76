"""Learning curve of a PushT run: success and coverage per DAgger round and vs wall time.

Reads `<run>/metrics.json` (what `vla-train` writes): each expert-in-the-loop round's rollout on
its own fresh seeds (the mixture policy of that round: it executes the expert's chunk with
probability beta**round) and the final evaluation on the test seeds. Prints one markdown table,
writes it with the JSON rows to --out, and plots both curves to a PNG.

    uv run --package vla-train python packages/vla-train/benchmarks/pusht_learning_curve.py \\
        outputs/imf_attnres_emb64_layer2_seed42 --out /tmp/vla_bench/pusht_curve
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vla_train.data.layout import atomic_write_bytes, atomic_write_json


def curve_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per DAgger round, then the final test evaluation (50 standard seeds, all seeds)."""
    rows = [
        {
            "point": f"round {r['round']}",
            "step": r["step"],
            "elapsed_s": r["elapsed_s"],
            "beta": r["beta"],
            "seeds": f"{len(r['seeds'])} fresh" if r.get("seeds") else "fresh",
            "success_rate": r["success_rate"],
            "mean_max_coverage": r["mean_max_coverage"],
        }
        for r in metrics.get("dagger_rounds", [])
    ]
    end = metrics["data_wall_s"] + metrics["train_wall_s"]
    std, ev = metrics["eval_standard"], metrics["eval"]
    rows.append(
        {
            "point": "final",
            "step": metrics["steps"],
            "elapsed_s": end,
            "beta": 0.0,
            "seeds": f"{std['n_episodes']} test",
            "success_rate": std["success_rate"],
            "mean_max_coverage": std["mean_max_coverage"],
        }
    )
    if ev["n_episodes"] > std["n_episodes"]:
        rows.append({**rows[-1], "seeds": f"{ev['n_episodes']} test", **_main(ev)})
    return rows


def _main(ev: dict[str, Any]) -> dict[str, float]:
    return {"success_rate": ev["success_rate"], "mean_max_coverage": ev["mean_max_coverage"]}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| point | step | wall s | beta | seeds | success | coverage |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['point']} | {r['step']} | {r['elapsed_s']:.0f} | {r['beta']:.3f} | "
            f"{r['seeds']} | {r['success_rate']:.3f} | {r['mean_max_coverage']:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    xs_round = list(range(1, len(rows) + 1))
    labels = [r["point"] for r in rows]
    for ax, xs, xlabel in ((axes[0], xs_round, "round"), (axes[1], None, "wall time (s)")):
        x = xs if xs is not None else [r["elapsed_s"] for r in rows]
        ax.plot(x, [r["success_rate"] for r in rows], "o-", label="success")
        ax.plot(x, [r["mean_max_coverage"] for r in rows], "s--", label="mean max-coverage")
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_xticks(xs_round, labels, rotation=30, fontsize=7)
    axes[0].legend(fontsize=8)
    fig.suptitle("PushT: DAgger rounds (fresh seeds, mixture policy) and final test evaluation")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_bench/pusht_curve"))
    args = parser.parse_args()
    metrics = json.loads((args.run_dir / "metrics.json").read_text())
    rows = curve_rows(metrics)
    table = markdown(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "curve.json", {"run_dir": str(args.run_dir), "rows": rows})
    atomic_write_bytes(args.out / "curve.md", (table + "\n").encode())
    plot(rows, args.out / "curve.png")
    print(f"wrote {args.out / 'curve.png'}")


if __name__ == "__main__":
    main()
