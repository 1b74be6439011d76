"""Conversion throughput before / after, side by side in one run on the same checkpoint.

The baseline is the `vla_convert` source of a git ref (`git archive`, put first on PYTHONPATH);
the current one is the working tree's. Both convert the same random pi0 LoRA checkpoint (full
widths, `--depth` layers; `convert_full.py --phase generate`), alternating baseline / current for
`--rounds` rounds so that load from other tenants hits both alike; each conversion is its own
subprocess (its own peak RSS). Prints one table (median MB/s, peak RSS / output) and the ratio.

  OMP_NUM_THREADS=1 uv run python packages/vla-convert/benchmarks/convert_ab.py \\
      --baseline-ref 29f8575 --depth 2 --rounds 3 --out /tmp/vla_convert_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = HERE / "convert_full.py"


def _phase(phase: str, extra_path: Path | None, **kw: object) -> dict:
    cmd = [sys.executable, str(FULL), "--phase", phase]
    for key, value in kw.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise RuntimeError(f"{phase} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _baseline_source(ref: str, into: Path) -> Path:
    root = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"],
        cwd=HERE,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", ref, "packages/vla-convert/src"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    src = into / "packages" / "vla-convert" / "src"
    if not (src / "vla_convert" / "convert.py").is_file():
        raise RuntimeError(f"{ref} has no packages/vla-convert/src/vla_convert")
    return src


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--baseline-ref", required=True, help="git ref of the 'before' converter")
    p.add_argument("--depth", type=int, default=2, help="LLM and SigLIP depth (full widths)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default="/tmp/vla_convert_ab.json")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vla_convert_ab-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"baseline": [], "current": []}
    try:
        baseline = _baseline_source(args.baseline_ref, work)
        ckpt = work / "ckpt"
        generated = _phase("generate", None, ckpt=ckpt, depth=args.depth, vision_depth=args.depth)
        for _ in range(args.rounds):
            for name, path in (("baseline", baseline), ("current", None)):
                out = work / f"out_{name}"
                runs[name].append(_phase("stream", path, ckpt=ckpt, output=out))
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def summary(name: str) -> dict:
        rs = runs[name]
        mbps = [r["output_bytes"] / r["seconds"] / 1e6 for r in rs]
        return {
            "mb_per_s": mbps,
            "median_mb_per_s": statistics.median(mbps),
            "peak_rss_over_output": max(r["peak_rss"] for r in rs) / rs[0]["output_bytes"],
            "output_gib": rs[0]["output_bytes"] / 2**30,
        }

    table = {name: summary(name) for name in runs}
    ratio = table["current"]["median_mb_per_s"] / table["baseline"]["median_mb_per_s"]
    print(
        f"pi0 LoRA, full widths, depth {args.depth}: {generated['params']:,} params, "
        f"output {table['current']['output_gib']:.2f} GiB fp32, {args.rounds} alternating rounds"
    )
    print("converter | MB/s per run | median MB/s | peak RSS / output")
    for name, row in table.items():
        runs_text = ", ".join(f"{v:.0f}" for v in row["mb_per_s"])
        print(
            f"{name} | {runs_text} | {row['median_mb_per_s']:.0f} | "
            f"{row['peak_rss_over_output']:.2f}"
        )
    print(f"current / baseline median throughput: {ratio:.2f}x")
    result = {
        "baseline_ref": args.baseline_ref,
        "depth": args.depth,
        "generate": generated,
        "runs": runs,
        "summary": table,
        "ratio": ratio,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
