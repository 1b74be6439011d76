"""`vla-convert openpi --checkpoint-dir <step> --out <dir> ...`: convert, summarise, exit non-zero
with the error's message (naming the offending key) on any conversion error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vla_convert.convert import convert_openpi
from vla_convert.errors import ConversionError
from vla_convert.lora import OPENPI_LORA_VARIANTS, LoraSpec

_GEMMA_VARIANTS = ["gemma_2b", "gemma_300m", "dummy", *sorted(OPENPI_LORA_VARIANTS)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-convert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "openpi",
        help="openpi JAX/Flax pi0 / pi0.5 checkpoint -> PyTorch safetensors (LoRA merged)",
        description="Convert <step>/params (+ assets/*/norm_stats.json) of an openpi checkpoint. "
        "Model type and every dimension are read from the tensors; LoRA alpha/rslora are not "
        "stored, so pass --lora-rank/--lora-alpha or the openpi LoRA variant names.",
    )
    p.add_argument("--checkpoint-dir", required=True, help="<step> dir (or its params/ dir)")
    p.add_argument("--out", required=True, help="output directory (created atomically)")
    p.add_argument(
        "--variant",
        choices=["pi0", "pi05"],
        help="expected model type; checked against the tensors, never used to infer them",
    )
    p.add_argument("--paligemma-variant", choices=_GEMMA_VARIANTS, help="openpi LLM variant")
    p.add_argument("--action-expert-variant", choices=_GEMMA_VARIANTS, help="openpi expert variant")
    p.add_argument("--lora-rank", type=int, help="LoRA rank (checked against the adapter shapes)")
    p.add_argument("--lora-alpha", type=float, help="LoRA alpha (scale = alpha/rank)")
    p.add_argument("--lora-rslora", action="store_true", help="rsLoRA: scale = alpha/sqrt(rank)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="stored dtype (default: float32 with LoRA or fp32 sources, else bfloat16)",
    )
    p.add_argument("--layout", choices=["vla", "openpi"], default="vla")
    p.add_argument("--action-horizon", type=int, default=50, help="written to config.json")
    p.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/Inf tensors")
    p.add_argument("--verify", action="store_true", help="compare module outputs vs JAX")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    lora = None
    if (args.lora_rank is None) != (args.lora_alpha is None):
        print("vla-convert: error: --lora-rank and --lora-alpha go together", file=sys.stderr)
        return 2
    try:
        if args.lora_rank is not None:
            lora = LoraSpec(args.lora_rank, args.lora_alpha, args.lora_rslora)
        summary = convert_openpi(
            args.checkpoint_dir,
            args.out,
            layout=args.layout,
            dtype=args.dtype,
            model=args.variant,
            paligemma_variant=args.paligemma_variant,
            action_expert_variant=args.action_expert_variant,
            lora=lora,
            action_horizon=args.action_horizon,
            allow_nonfinite=args.allow_nonfinite,
            verify=args.verify,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (ConversionError, FileExistsError, ValueError) as exc:
        print(f"vla-convert: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
