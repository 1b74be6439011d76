"""Per-tower, per-module LoRA declarations, checked against the adapters' shapes.

openpi's `gemma.Config.lora_configs` holds one `LoRAConfig` for `"attn"` and one for `"ffn"` per
tower (PaliGemma backbone, action expert), so ranks and alphas may differ across all four. A
checkpoint stores the ranks (in the adapter shapes) but neither alpha nor rsLoRA. Here:
- ranks come from the shapes; a declared rank that disagrees is refused (`LoraConfigError`
  naming the tower, module, leaf and shape);
- attention alpha / rsLoRA come from the most specific declaration (tower+module > tower or module
  > all) or from an openpi LoRA variant name; never guessed (`LoraConfigError`);
- FeedForward LoRA is unscaled in openpi, so it needs no declaration; an alpha declared for it
  only warns (openpi ignores it too);
- a declaration or LoRA variant that matches no adapters is refused: it would be silently unused.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vla_convert.dims import LLM, GemmaDims, OpenpiDims, expert_suffix
from vla_convert.errors import LoraConfigError, ModelMismatchError
from vla_convert.lora import OPENPI_LORA_VARIANTS, LoraSpec

TOWERS = ("backbone", "expert")
MODULES = ("attn", "ffn")
_ALL = "all"

# openpi `gemma.py::get_config`: (width, depth, mlp_dim, num_heads, num_kv_heads, head_dim)
OPENPI_GEMMA_VARIANTS: dict[str, tuple[int, int, int, int, int, int]] = {
    "dummy": (64, 4, 128, 8, 1, 16),
    "gemma_300m": (1024, 18, 4096, 8, 1, 256),
    "gemma_300m_lora": (1024, 18, 4096, 8, 1, 256),
    "gemma_2b": (2048, 18, 16_384, 8, 1, 256),
    "gemma_2b_lora": (2048, 18, 16_384, 8, 1, 256),
}
_DIM_NAMES = ("width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim")


@dataclass(frozen=True)
class LoraDeclaration:
    """What a user states about one tower's / module's LoRA (`"all"` matches every one).

    `rank` None = take it from the shapes; `alpha` None = not declared (required for attention
    adapters unless an openpi LoRA variant name supplies it)."""

    tower: str = _ALL
    module: str = _ALL
    rank: int | None = None
    alpha: float | None = None
    rslora: bool = False

    def __post_init__(self) -> None:
        if self.tower not in (*TOWERS, _ALL):
            raise ValueError(f"LoRA tower must be one of {[*TOWERS, _ALL]}, got {self.tower!r}")
        if self.module not in (*MODULES, _ALL):
            raise ValueError(f"LoRA module must be one of {[*MODULES, _ALL]}, got {self.module!r}")
        if self.rank is not None and self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")
        if self.alpha is not None and (not math.isfinite(self.alpha) or self.alpha <= 0):
            raise ValueError(f"LoRA alpha must be a positive finite number, got {self.alpha}")

    @classmethod
    def parse(cls, text: str) -> LoraDeclaration:
        """`tower=backbone,module=attn,rank=16,alpha=16,rslora=true` (every field optional)."""
        fields: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or key not in ("tower", "module", "rank", "alpha", "rslora"):
                raise ValueError(
                    f"bad LoRA declaration item {item!r} in {text!r}: expected key=value with "
                    "key in tower, module, rank, alpha, rslora"
                )
            if key in fields:
                raise ValueError(f"LoRA declaration {text!r} sets {key} twice")
            try:
                if key == "rank":
                    fields[key] = int(value)
                elif key == "alpha":
                    fields[key] = float(value)
                elif key == "rslora":
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    fields[key] = value.lower() in ("true", "1", "yes")
                else:
                    fields[key] = value
            except ValueError as exc:
                raise ValueError(f"bad value for {key} in LoRA declaration {text!r}") from exc
        return cls(**fields)

    @classmethod
    def from_spec(cls, spec: LoraSpec, tower: str = _ALL, module: str = _ALL) -> LoraDeclaration:
        return cls(tower, module, spec.rank, spec.alpha, spec.rslora)

    def matches(self, tower: str, module: str) -> bool:
        return self.tower in (tower, _ALL) and self.module in (module, _ALL)

    @property
    def specificity(self) -> int:
        return (self.tower != _ALL) + (self.module != _ALL)

    def describe(self) -> str:
        parts = [f"tower={self.tower}", f"module={self.module}"]
        parts += [f"rank={self.rank}"] if self.rank is not None else []
        parts += [f"alpha={self.alpha:g}"] if self.alpha is not None else []
        parts += ["rslora=true"] if self.rslora else []
        return ",".join(parts)


@dataclass(frozen=True)
class TowerLora:
    """Resolved LoRA of one tower: attention spec (scaled merge) and FeedForward rank (unscaled)."""

    attn: LoraSpec | None
    ffn_rank: int | None

    def record(self) -> dict[str, Any] | None:
        if self.attn is None and self.ffn_rank is None:
            return None
        attn = None
        if self.attn is not None:
            attn = {
                "rank": self.attn.rank,
                "alpha": self.attn.alpha,
                "rslora": self.attn.rslora,
                "scale": self.attn.scale,
            }
        ffn = None if self.ffn_rank is None else {"rank": self.ffn_rank, "scale": 1.0}
        return {"attn": attn, "ffn": ffn}


def normalise_declarations(
    lora: LoraSpec | LoraDeclaration | Sequence[LoraDeclaration] | None,
) -> list[LoraDeclaration]:
    if lora is None:
        return []
    if isinstance(lora, LoraSpec):
        return [LoraDeclaration.from_spec(lora)]
    if isinstance(lora, LoraDeclaration):
        return [lora]
    return list(lora)


def check_variant(tower: str, variant: str | None, e: GemmaDims) -> None:
    """Refuse an openpi variant name whose dimensions the checkpoint's tensors contradict."""
    if variant is None:
        return
    if variant not in OPENPI_GEMMA_VARIANTS:
        raise ModelMismatchError(
            f"unknown openpi Gemma variant {variant!r} for the {tower}; known: "
            f"{sorted(OPENPI_GEMMA_VARIANTS)}"
        )
    want = dict(zip(_DIM_NAMES, OPENPI_GEMMA_VARIANTS[variant]))
    got = {name: getattr(e, name) for name in _DIM_NAMES}
    wrong = [f"{k} {got[k]} (variant says {want[k]})" for k in _DIM_NAMES if got[k] != want[k]]
    if wrong:
        raise ModelMismatchError(
            f"the {tower} was declared as openpi variant {variant!r} but the checkpoint's tensors "
            f"have {', '.join(wrong)}"
        )


def _adapter_leaf(e: GemmaDims, expert: int, module: str) -> str:
    sfx = expert_suffix(expert)
    if module == "ffn":
        return f"{LLM}/layers/mlp{sfx}/linear_lora_a"
    name = "qkv_einsum" if e.fused_qkv else "q_einsum"
    return f"{LLM}/layers/attn/{name}{sfx}/lora_a"


def _pick(declarations: list[LoraDeclaration], tower: str, module: str) -> LoraDeclaration | None:
    matching = [d for d in declarations if d.matches(tower, module)]
    if not matching:
        return None
    best = max(d.specificity for d in matching)
    top = {d for d in matching if d.specificity == best}
    if len(top) > 1:
        raise LoraConfigError(
            f"conflicting LoRA declarations for {tower} {module}: "
            + "; ".join(sorted(d.describe() for d in top))
        )
    return top.pop()


def resolve_tower_loras(
    dims: OpenpiDims,
    lora: LoraSpec | LoraDeclaration | Sequence[LoraDeclaration] | None,
    variants: tuple[str | None, str | None] = (None, None),
) -> tuple[TowerLora, TowerLora]:
    """Resolve (backbone, expert) LoRA from declarations, variant names and adapter shapes."""
    declarations = normalise_declarations(lora)
    used: set[LoraDeclaration] = set()
    resolved: list[TowerLora] = []
    for expert, (tower, e, variant) in enumerate(zip(TOWERS, dims.experts, variants)):
        check_variant(tower, variant, e)
        variant_spec = OPENPI_LORA_VARIANTS.get(variant) if variant else None
        has_adapters = e.attn_lora_rank is not None or e.ffn_lora_rank is not None
        if variant_spec is not None and not has_adapters:
            raise LoraConfigError(
                f"the {tower} was declared as LoRA variant {variant!r} but the checkpoint has no "
                f"LoRA adapters in it (no {_adapter_leaf(e, expert, 'attn')}): the LoRA part "
                "would be silently unused; pass the variant without '_lora'"
            )
        ranks = {"attn": e.attn_lora_rank, "ffn": e.ffn_lora_rank}
        attn: LoraSpec | None = None
        for module in MODULES:
            decl = _pick(declarations, tower, module)
            rank = ranks[module]
            if rank is None:
                continue
            if decl is not None:
                used.add(decl)
            leaf = _adapter_leaf(e, expert, module)
            if decl is not None and decl.rank is not None and decl.rank != rank:
                raise LoraConfigError(
                    f"{tower} {module}: declared LoRA rank {decl.rank} ({decl.describe()}) but "
                    f"the adapters in the checkpoint have rank {rank} ({leaf} ends in {rank})"
                )
            from_variant = variant_spec is not None and (decl is None or decl.alpha is None)
            if from_variant and variant_spec is not None and variant_spec.rank != rank:
                raise LoraConfigError(
                    f"{tower} {module}: variant {variant} says LoRA rank {variant_spec.rank} "
                    f"but the adapters in the checkpoint have rank {rank} ({leaf})"
                )
            if module == "ffn":
                if decl is not None and decl.module == "ffn" and decl.alpha is not None:
                    warnings.warn(
                        f"{tower} ffn: LoRA alpha {decl.alpha:g} ignored: openpi's FeedForward "
                        "LoRA is never scaled",
                        stacklevel=3,
                    )
                continue
            if decl is not None and decl.alpha is not None:
                attn = LoraSpec(rank, decl.alpha, decl.rslora)
            elif variant_spec is not None:
                attn = LoraSpec(rank, variant_spec.alpha, variant_spec.rslora)
            else:
                known = ", ".join(sorted(OPENPI_LORA_VARIANTS))
                hint = f" (variant {variant!r} has no LoRA)" if variant else ""
                raise LoraConfigError(
                    f"{tower} attention carries LoRA adapters of rank {rank} ({leaf}), but alpha "
                    f"/ rslora are not stored in openpi checkpoints{hint}: declare them, e.g. "
                    f"--lora tower={tower},alpha=A (or a LoRA variant: {known})"
                )
        resolved.append(TowerLora(attn, e.ffn_lora_rank))
    unused = [d for d in declarations if d not in used]
    if unused:
        where = "; ".join(d.describe() for d in unused)
        raise LoraConfigError(
            f"LoRA declaration(s) {where} match no adapters in the checkpoint (adapter ranks: "
            + ", ".join(
                f"{t} attn={e.attn_lora_rank} ffn={e.ffn_lora_rank}"
                for t, e in zip(TOWERS, dims.experts)
            )
            + "): they would be silently unused"
        )
    return resolved[0], resolved[1]
