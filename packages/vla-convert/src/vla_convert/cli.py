"""`vla-convert openpi --checkpoint-dir <step> --out <dir> ...`: convert, summarise, exit non-zero
with the error's message (naming the offending key) on any conversion error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vla_convert.convert import convert_openpi
from vla_convert.errors import ConversionError
from vla_convert.lora_config import OPENPI_GEMMA_VARIANTS, LoraDeclaration

_GEMMA_VARIANTS = sorted(OPENPI_GEMMA_VARIANTS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-convert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "openpi",
        help="openpi JAX/Flax pi0 / pi0.5 checkpoint -> PyTorch safetensors (LoRA merged)",
        description="Convert <step>/params (+ assets/*/norm_stats.json) of an openpi checkpoint. "
        "Model type and every dimension are read from the tensors; LoRA alpha/rslora are not "
        "stored: declare them per tower / module with --lora, or pass the openpi LoRA variant "
        "names.",
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
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="tower=T,module=M,rank=R,alpha=A,rslora=B",
        help="LoRA of one tower (backbone|expert|all) and module (attn|ffn|all), repeatable; "
        "rank defaults to the adapters' shapes (checked when given), alpha is required for "
        "attention adapters (not stored in checkpoints); FeedForward LoRA is unscaled",
    )
    p.add_argument("--lora-rank", type=int, help="shorthand: --lora tower=all,rank=R,...")
    p.add_argument("--lora-alpha", type=float, help="shorthand: --lora tower=all,alpha=A,...")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        lora = [LoraDeclaration.parse(text) for text in args.lora]
        if args.lora_rank is not None or args.lora_alpha is not None or args.lora_rslora:
            lora.append(
                LoraDeclaration("all", "all", args.lora_rank, args.lora_alpha, args.lora_rslora)
            )
    except ValueError as exc:
        parser.error(str(exc))  # exits 2
    try:
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
    except OSError as exc:  # permissions, full disk, ...: the cause and the path, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"vla-convert: error: {type(exc).__name__}: {exc.strerror or exc}{where}",
            file=sys.stderr,
        )
        return 1
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
