"""Convert an openpi JAX checkpoint into PyTorch safetensors, streaming tensor by tensor.

Steps: read leaf metadata (orbax) -> infer dims from shapes -> name every unknown / missing /
misshapen leaf -> resolve LoRA scales (never guessed) -> plan the openpi-PyTorch tensors -> rename
them into the requested layout -> write each tensor as it is produced into a temp dir -> optional
verification of module outputs against JAX -> rename the temp dir into place.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from vla_convert import layouts
from vla_convert.checkpoint import OpenpiCheckpoint, copy_norm_stats
from vla_convert.dims import OpenpiDims, infer_dims, validate_leaves
from vla_convert.errors import (
    ModelMismatchError,
    NonFiniteError,
    UnknownLeafError,
)
from vla_convert.lora import LoraSpec
from vla_convert.lora_config import LoraDeclaration, resolve_tower_loras
from vla_convert.mapping import Rule, as_tensor, build_plan, plan_targets
from vla_convert.writer import (
    StreamingSafetensorsWriter,
    atomic_output_dir,
    check_output_location,
)

WEIGHTS_FILE = "model.safetensors"
CONVERSION_FILE = "conversion.json"
_OUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ConversionSummary:
    """What was written; `max_abs_diff` holds per-kind verification errors when verify ran."""

    out_dir: Path
    layout: str
    dtype: str
    model: str  # "pi0" | "pi05"
    tensors: int
    bytes: int
    lora_modules: list[str]
    lora: dict[str, dict[str, Any] | None]
    norm_stats: list[str]
    seconds: float
    dims: OpenpiDims
    max_abs_diff: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [
            f"wrote {self.out_dir} ({self.layout} layout, {self.dtype}, {self.model})",
            f"  tensors: {self.tensors}, bytes: {self.bytes:,} "
            f"({self.bytes / max(self.seconds, 1e-9) / 1e6:.1f} MB/s over {self.seconds:.1f} s)",
            f"  merged LoRA modules: {len(self.lora_modules)}"
            + (f" ({', '.join(self.lora_modules)})" if self.lora_modules else ""),
        ]
        if self.norm_stats:
            lines.append(f"  norm stats: {', '.join(self.norm_stats)}")
        if self.max_abs_diff:
            worst = max(self.max_abs_diff.values())
            lines.append(f"  verify: max |Δ| = {worst:.3g} over {len(self.max_abs_diff)} kinds")
            lines += [f"    {k}: {v:.3g}" for k, v in sorted(self.max_abs_diff.items())]
        return "\n".join(lines)


def count_nonfinite(array: np.ndarray) -> int:
    """NaN/Inf count from the exponent bits (fast for bf16/fp32), row block by row block."""
    masks = {"bfloat16": (np.uint16, 0x7F80), "float32": (np.uint32, 0x7F800000)}
    rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    step = max(1, (16 << 20) // max(rows[0].nbytes, 1))
    bad = 0
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step]
        if array.dtype.name in masks:
            bits, mask = masks[array.dtype.name]
            exponent = block.view(bits) & bits(mask)
            bad += int(np.count_nonzero(exponent == bits(mask)))
        else:
            bad += int(np.count_nonzero(~np.isfinite(block)))
    return bad


def _checked_reader(ckpt: OpenpiCheckpoint, allow_nonfinite: bool) -> Callable[[str], Tensor]:
    def read(key: str) -> Tensor:
        array = ckpt.read(key)
        if not allow_nonfinite:
            bad = count_nonfinite(array)
            if bad:
                raise NonFiniteError(
                    f"leaf {key} {array.shape} holds {bad} NaN/Inf value(s) "
                    "(pass allow_nonfinite=True / --allow-nonfinite to convert anyway)"
                )
        return as_tensor(array)

    return read


def _default_dtype(ckpt: OpenpiCheckpoint, has_lora: bool) -> str:
    """float32 when LoRA is merged or any leaf is stored in fp32; else the stored bf16."""
    if has_lora or any(info.dtype == np.float32 for info in ckpt.leaves.values()):
        return "float32"
    return "bfloat16"


def convert_openpi(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    layout: Literal["vla", "openpi"] = "vla",
    dtype: Literal["float32", "bfloat16"] | None = None,
    model: Literal["pi0", "pi05"] | None = None,
    paligemma_variant: str | None = None,
    action_expert_variant: str | None = None,
    lora: LoraSpec | LoraDeclaration | Sequence[LoraDeclaration] | None = None,
    action_horizon: int = 50,
    config_overrides: dict[str, Any] | None = None,
    allow_nonfinite: bool = False,
    verify: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> ConversionSummary:
    """Convert `<step>/params` (+ assets) of an openpi checkpoint into `out_dir`.

    `model` (pi0 / pi05) is only checked against the tensors; every dimension is inferred, and the
    openpi variant names, when given, are checked against them (`ModelMismatchError`).
    LoRA: ranks come from the adapter shapes; attention alpha / rsLoRA from `lora` (one
    `LoraSpec` for every tower, or per-tower / per-module `LoraDeclaration`s) or from LoRA variant
    names (e.g. `gemma_2b_lora`); FeedForward LoRA is unscaled. Missing alpha, a contradicting
    rank, or a declaration that matches no adapters raise `LoraConfigError`. `action_horizon` and
    `config_overrides` (vla layout: extra `PI0Config` fields such as `num_cameras`) fill the config
    fields that a checkpoint does not store.
    """
    start = time.perf_counter()
    given = Path(checkpoint_dir)
    check_output_location(out_dir, [given, given.parent] if given.name == "params" else [given])
    with OpenpiCheckpoint(checkpoint_dir) as ckpt:
        return _convert(
            ckpt,
            out_dir,
            start,
            layout=layout,
            dtype=dtype,
            model=model,
            variants=(paligemma_variant, action_expert_variant),
            lora=lora,
            action_horizon=action_horizon,
            config_overrides=config_overrides,
            allow_nonfinite=allow_nonfinite,
            verify=verify,
            overwrite=overwrite,
            progress=progress,
        )


def _convert(
    ckpt: OpenpiCheckpoint,
    out_dir: str | Path,
    start: float,
    *,
    layout: Literal["vla", "openpi"],
    dtype: Literal["float32", "bfloat16"] | None,
    model: Literal["pi0", "pi05"] | None,
    variants: tuple[str | None, str | None],
    lora: LoraSpec | LoraDeclaration | Sequence[LoraDeclaration] | None,
    action_horizon: int,
    config_overrides: dict[str, Any] | None,
    allow_nonfinite: bool,
    verify: bool,
    overwrite: bool,
    progress: bool,
) -> ConversionSummary:
    shapes = {key: info.shape for key, info in ckpt.leaves.items()}
    dims = infer_dims(shapes)
    validate_leaves(shapes, dims)
    found = "pi05" if dims.pi05 else "pi0"
    if model is not None and model != found:
        raise ModelMismatchError(
            f"asked for {model} but the checkpoint is {found} "
            f"({'time_mlp_in' if dims.pi05 else 'state_proj'} present)"
        )
    towers = resolve_tower_loras(dims, lora, variants)
    specs = (towers[0].attn, towers[1].attn)
    out_dtype: str = dtype or _default_dtype(ckpt, dims.has_lora)
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"dtype must be one of {list(_OUT_DTYPES)}, got {out_dtype!r}")
    if dims.has_lora and out_dtype == "bfloat16":
        warnings.warn(
            "storing merged LoRA weights in bfloat16 rounds the (small) adapter delta away in "
            "part; float32 is exact (openpi PR #960 measured ~10x larger drift vs JAX)",
            stacklevel=2,
        )

    rules = build_plan(dims, specs)
    consumed = {key for rule in rules for key in rule.sources}
    if consumed != set(shapes):
        raise UnknownLeafError(
            f"mapping does not consume leaves {sorted(set(shapes) - consumed)} "
            f"(and wants absent {sorted(consumed - set(shapes))})"
        )
    targets = plan_targets(rules)
    out_layout = layouts.get_layout(layout, config_overrides)
    renamed = out_layout.rename_all(targets, dims)
    lora_record = {
        name: tower.record() for name, tower in zip(("paligemma", "action_expert"), towers)
    }
    metadata = {"format": "pt", "source": "openpi", "converter": "vla-convert"}

    read = _checked_reader(ckpt, allow_nonfinite)
    lora_modules = [m for rule in rules for m in rule.lora_modules]
    sources = (ckpt.step_dir, ckpt.params_dir)
    with atomic_output_dir(out_dir, overwrite=overwrite, sources=sources) as tmp:
        weights = tmp / WEIGHTS_FILE
        writer = StreamingSafetensorsWriter(
            weights, {renamed[n]: s for n, s in targets.items()}, _OUT_DTYPES[out_dtype], metadata
        )
        try:
            _stream(rules, read, writer, renamed, progress)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        out_layout.write_config(
            dims, tmp / layouts.CONFIG_FILE, dtype=out_dtype, action_horizon=action_horizon
        )
        norm_stats = copy_norm_stats(ckpt.norm_stats_files(), tmp)
        record = {
            "source": str(ckpt.step_dir),
            "value_suffixed": ckpt.value_suffixed,
            "model": found,
            "layout": layout,
            "dtype": out_dtype,
            "lora": lora_record,
            "lora_modules": lora_modules,
            "dims": asdict(dims),
        }
        (tmp / CONVERSION_FILE).write_text(json.dumps(record, indent=2) + "\n")
        diffs: dict[str, float] = {}
        if verify:
            from vla_convert.verify import verify_conversion

            diffs = verify_conversion(ckpt, dims, specs, weights, renamed, out_dtype)
    return ConversionSummary(
        out_dir=Path(out_dir),
        layout=layout,
        dtype=out_dtype,
        model=found,
        tensors=len(targets),
        bytes=writer.data_bytes,
        lora_modules=lora_modules,
        lora=lora_record,
        norm_stats=norm_stats,
        seconds=time.perf_counter() - start,
        dims=dims,
        max_abs_diff=diffs,
    )


def _stream(
    rules: list[Rule],
    read: Callable[[str], Tensor],
    writer: StreamingSafetensorsWriter,
    renamed: dict[str, str],
    progress: bool,
) -> None:
    """Read rule i+1's leaves (orbax/tensorstore decode + NaN check, off the GIL) in a helper
    thread while rule i is merged, cast and written: the profile of a depth-1 full-width pi0
    LoRA checkpoint spent ~35% waiting on reads. Peak memory grows by one leaf group."""
    from tqdm import tqdm

    def load(rule: Rule) -> dict[str, Tensor]:
        return {key: read(key) for key in rule.sources}

    itemsize = torch.empty((), dtype=writer.dtype).element_size()
    with (
        tqdm(
            total=writer.data_bytes, unit="B", unit_scale=True, disable=not progress, desc="convert"
        ) as bar,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-convert-read") as pool,
    ):
        pending: Future[dict[str, Tensor]] | None = pool.submit(load, rules[0]) if rules else None
        for index, rule in enumerate(rules):
            assert pending is not None
            leaves = pending.result()
            pending = pool.submit(load, rules[index + 1]) if index + 1 < len(rules) else None
            try:
                for name, array in rule.produce(leaves.__getitem__):
                    writer.write(renamed[name], array)
                    bar.update(array.numel() * itemsize)
            except BaseException:
                if pending is not None:
                    pending.cancel()
                raise
            del leaves
