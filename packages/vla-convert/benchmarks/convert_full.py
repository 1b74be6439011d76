"""Convert a full-size random pi0 LoRA checkpoint (openpi layout on disk, ~6.6 GB bf16) and compare
the streaming converter with the load-everything approach (restore the whole tree, map it in
memory, save once) that openpi's converter uses.

Each phase runs in its own subprocess so its peak RSS (ru_maxrss) is its own:
  generate   write the random checkpoint (bf16 leaves at the generator scales, LoRA r16/r32)
  stream     `convert_openpi(..., layout="vla")` (fp32 output, LoRA merged)
  load_all   whole-tree orbax restore + in-memory mapping + one `safetensors.save_file`
`load_all` at full size would not fit next to the other tenants of a 24 GiB machine; by default it
is MEASURED at a reduced depth (same widths) next to a streaming run at that depth, and its
full-size peak is ESTIMATED as (full-size source tree + full-size output) x the overhead factor
measured there. Pass --load-all-full to measure it at full size instead.
Mind the generator's own peak: ~18 GiB RSS at full size (orbax's save holds copies of the tree);
~7 GB of disk for the checkpoint plus ~13 GB for the fp32 output (both deleted afterwards).

  OMP_NUM_THREADS=1 uv run python packages/vla-convert/benchmarks/convert_full.py \
      --workdir /tmp/vla_convert_bench --out /tmp/vla_convert_bench.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _dims(depth: int | None, vision_depth: int | None):  # type: ignore[no-untyped-def]
    from vla_convert._testing import full_pi0_dims

    dims = full_pi0_dims(pi05=False, lora=True)
    if depth is not None:
        dims = dataclasses.replace(
            dims,
            paligemma=dataclasses.replace(dims.paligemma, depth=depth),
            expert=dataclasses.replace(dims.expert, depth=depth),
        )
    if vision_depth is not None:
        dims = dataclasses.replace(
            dims, vision=dataclasses.replace(dims.vision, depth=vision_depth)
        )
    return dims


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fast_bf16_leaves(dims, seed: int = 0):  # type: ignore[no-untyped-def]
    """Every leaf of `dims` in bf16, at the generator's per-leaf scale, cut at random offsets from
    a few 4M-value pools of N(0, std) samples: memcpy speed instead of ~3.3 G RNG draws on a
    shared 2-core machine. Values do not change the conversion's cost; they stay finite and
    moderate so `--verify` still means something."""
    import ml_dtypes
    import numpy as np

    from vla_convert._testing import _std
    from vla_convert.dims import expected_leaves

    rng = np.random.default_rng(seed)
    pools: dict[float, np.ndarray] = {}
    size = 1 << 22
    for key, shape in expected_leaves(dims).items():
        std = _std(key, shape)
        if std not in pools:
            pools[std] = (rng.standard_normal(2 * size, dtype=np.float32) * std).astype(
                ml_dtypes.bfloat16
            )
        pool = pools[std]
        flat = np.empty(int(np.prod(shape)), ml_dtypes.bfloat16)
        for start in range(0, flat.size, size):
            n = min(size, flat.size - start)
            offset = int(rng.integers(0, pool.size - n + 1))
            flat[start : start + n] = pool[offset : offset + n]
        yield key, flat.reshape(shape)


def phase_generate(args: argparse.Namespace) -> dict:
    from vla_convert._testing import write_openpi_checkpoint

    dims = _dims(args.depth, args.vision_depth)
    start = time.perf_counter()
    params = dict(_fast_bf16_leaves(dims, seed=0))
    numel = sum(a.size for a in params.values())
    write_openpi_checkpoint(args.ckpt, params, norm_stats={"state": {"mean": [0.0] * 32}})
    return {
        "params": int(numel),
        "leaves": len(params),
        "seconds": time.perf_counter() - start,
        "checkpoint_bytes": _dir_bytes(Path(args.ckpt)),
        "peak_rss": _peak_rss_bytes(),
    }


def phase_stream(args: argparse.Namespace) -> dict:
    from vla_convert.convert import convert_openpi

    try:  # per-tower LoRA declarations (the variant names are checked against the depth)
        from vla_convert.lora_config import LoraDeclaration

        lora: dict = {
            "lora": [LoraDeclaration("backbone", alpha=16.0), LoraDeclaration("expert", alpha=32.0)]
        }
    except ImportError:  # a baseline from before per-tower LoRA (see convert_ab.py)
        lora = {"paligemma_variant": "gemma_2b_lora", "action_expert_variant": "gemma_300m_lora"}
    start = time.perf_counter()
    summary = convert_openpi(args.ckpt, args.output, layout="vla", verify=args.verify, **lora)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tensors": summary.tensors,
        "output_bytes": summary.bytes,
        "lora_modules": len(summary.lora_modules),
        "verify_max_abs_diff": max(summary.max_abs_diff.values()) if summary.max_abs_diff else None,
        "peak_rss": _peak_rss_bytes(),
    }


def phase_load_all(args: argparse.Namespace) -> dict:
    """The load-everything approach: restore the whole tree, map it all in memory, save once."""
    import numpy as np
    import orbax.checkpoint as ocp
    from safetensors.torch import save_file

    from vla_convert.dims import infer_dims
    from vla_convert.lora import OPENPI_LORA_VARIANTS
    from vla_convert.mapping import build_plan, map_params

    start = time.perf_counter()
    params_dir = Path(args.ckpt).resolve() / "params"
    checkpointer = ocp.PyTreeCheckpointer()
    meta = checkpointer.metadata(params_dir).item_metadata.tree
    restore_args = __import__("jax").tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta
    )
    tree = checkpointer.restore(
        params_dir, args=ocp.args.PyTreeRestore(item=meta, restore_args=restore_args)
    )["params"]
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix):  # type: ignore[no-untyped-def]
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
            else:
                flat[f"{prefix}{k}"] = v

    walk(tree, "")
    dims = infer_dims({k: v.shape for k, v in flat.items()})
    specs = (OPENPI_LORA_VARIANTS["gemma_2b_lora"], OPENPI_LORA_VARIANTS["gemma_300m_lora"])
    tensors = map_params(flat, build_plan(dims, specs))  # all fp32, all in memory
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    return {
        "seconds": time.perf_counter() - start,
        "output_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "peak_rss": _peak_rss_bytes(),
    }


def _child(phase: str, **kw: object) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase]
    for k, v in kw.items():
        if v is None or v is False:
            continue
        cmd += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"phase {phase} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--phase", choices=["generate", "stream", "load_all"])
    p.add_argument("--ckpt")
    p.add_argument("--output")
    p.add_argument("--depth", type=int, help="LLM depth (default: full size, 18)")
    p.add_argument("--vision-depth", type=int, help="SigLIP depth (default: full size, 27)")
    p.add_argument("--verify", action="store_true")
    p.add_argument("--workdir", default="/tmp/vla_convert_bench")
    p.add_argument("--out", default="/tmp/vla_convert_bench.json")
    p.add_argument("--small-depth", type=int, default=3, help="depth of the side-by-side run")
    p.add_argument("--load-all-full", action="store_true", help="measure load-all at full size")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    args = p.parse_args()
    if args.phase:
        fn = {"generate": phase_generate, "stream": phase_stream, "load_all": phase_load_all}
        print(json.dumps(fn[args.phase](args)))
        return

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: dict[str, dict] = {}
    try:
        # side by side at reduced depth (same widths): streaming vs load-everything
        small = {"depth": args.small_depth, "vision_depth": args.small_depth}
        results["small_generate"] = _child("generate", ckpt=work / "small", **small)
        results["small_stream"] = _child("stream", ckpt=work / "small", output=work / "s_out")
        shutil.rmtree(work / "s_out")
        results["small_load_all"] = _child("load_all", ckpt=work / "small", output=work / "l_out")
        shutil.rmtree(work / "l_out")
        shutil.rmtree(work / "small")
        # full size: streaming measured
        results["full_generate"] = _child("generate", ckpt=work / "full")
        # with --verify, the verification runs inside this measured conversion (wall time and
        # peak RSS include it), as `vla-convert openpi --verify` does
        results["full_stream"] = _child(
            "stream", ckpt=work / "full", output=work / "f_out", verify=args.verify
        )
        shutil.rmtree(work / "f_out")
        if args.load_all_full:
            results["full_load_all"] = _child("load_all", ckpt=work / "full", output=work / "fl")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    sg, ss, sl = results["small_generate"], results["small_stream"], results["small_load_all"]
    fg, fs = results["full_generate"], results["full_stream"]
    # load-all holds the restored tree (checkpoint dtype) and the fp32 output at once
    factor = sl["peak_rss"] / (sg["params"] * 2 + sl["output_bytes"])
    est_full = factor * (fg["params"] * 2 + fs["output_bytes"])
    full_load_all = results.get("full_load_all", {}).get("peak_rss", est_full)
    gib = 2**30
    rows = [
        ("source params", f"{sg['params']:,}", f"{fg['params']:,}"),
        (
            "checkpoint size (GiB, bf16)",
            f"{sg['checkpoint_bytes'] / gib:.2f}",
            f"{fg['checkpoint_bytes'] / gib:.2f}",
        ),
        (
            "output size (GiB, fp32)",
            f"{ss['output_bytes'] / gib:.2f}",
            f"{fs['output_bytes'] / gib:.2f}",
        ),
        ("stream: wall time (s)", f"{ss['seconds']:.1f}", f"{fs['seconds']:.1f}"),
        (
            "stream: output MB/s",
            f"{ss['output_bytes'] / ss['seconds'] / 1e6:.0f}",
            f"{fs['output_bytes'] / fs['seconds'] / 1e6:.0f}",
        ),
        ("stream: peak RSS (GiB)", f"{ss['peak_rss'] / gib:.2f}", f"{fs['peak_rss'] / gib:.2f}"),
        (
            "stream: peak RSS / output size",
            f"{ss['peak_rss'] / ss['output_bytes']:.2f}",
            f"{fs['peak_rss'] / fs['output_bytes']:.2f}",
        ),
        (
            "load-all: wall time (s)",
            f"{sl['seconds']:.1f}",
            "measured" if "full_load_all" in results else "-",
        ),
        (
            "load-all: peak RSS (GiB)",
            f"{sl['peak_rss'] / gib:.2f}",
            f"{full_load_all / gib:.2f}" + ("" if "full_load_all" in results else " (est.)"),
        ),
        (
            "load-all / stream peak RSS",
            f"{sl['peak_rss'] / ss['peak_rss']:.2f}",
            f"{full_load_all / fs['peak_rss']:.2f}",
        ),
    ]
    if fs.get("verify_max_abs_diff") is not None:
        rows.append(("verify max |Δ| (fp32)", "-", f"{fs['verify_max_abs_diff']:.2e}"))
    head = ("metric", f"depth {args.small_depth} (side by side)", "full pi0 LoRA (depth 18/27)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    results["load_all_overhead_factor"] = {"value": factor}
    results["full_load_all_peak_rss"] = {
        "value": full_load_all,
        "estimated": "full_load_all" not in results,
    }
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
