"""Fold openpi LoRA adapters into their base weights, following openpi's runtime exactly.

`lora.py::Einsum` computes `einsum(eqn, x, W) + s * einsum(eqn_b, einsum(eqn_a, x, A), B)` where
eqn_a / eqn_b replace the weight's last-two-axis labels with a rank label. The merged weight is
derived here FROM THOSE EQUATIONS: a label of B that survives neither into eqn_a's output nor into
the final output is summed inside eqn_b alone, so it gets a fresh label in the merge. For
`attn_vec_einsum` (`BTNH,NHD->BTD`) that yields `dW[n,h,d] = sum_r A[n,h,r] * sum_n' B[n',r,d]`
(not a per-head product); for q / kv / qkv it yields per-head products.
`lora.py::FeedForward` adds `x @ A @ B` WITHOUT any alpha/rank scale.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass

import torch
from torch import Tensor

RANK_LABEL = "L"  # openpi's LoRAConfig.label

# The einsum equations openpi's gemma.py Attention runs through LoRA-capable `Einsum` modules.
Q_EINSUM = "BTD,NDH->BTNH"
KV_EINSUM = "BSD,2KDH->2BSKH"
QKV_EINSUM = "BSD,3KDH->3BSKH"
ATTN_VEC_EINSUM = "BTNH,NHD->BTD"


@dataclass(frozen=True)
class LoraSpec:
    """openpi `LoRAConfig` fields that are NOT stored in a checkpoint (only the rank is, in shapes)."""

    rank: int
    alpha: float
    rslora: bool = False

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be a positive finite number, got {self.alpha}")

    @property
    def scale(self) -> float:
        """openpi `LoRAConfig.scaling_value`: alpha/rank, or alpha/sqrt(rank) with rsLoRA."""
        return self.alpha / math.sqrt(self.rank) if self.rslora else self.alpha / self.rank


# openpi `gemma.py::get_config` variants that carry LoRA (attn and ffn use the same config).
OPENPI_LORA_VARIANTS: dict[str, LoraSpec] = {
    "gemma_2b_lora": LoraSpec(rank=16, alpha=16.0),
    "gemma_300m_lora": LoraSpec(rank=32, alpha=32.0),
}


def lora_equations(eqn: str, label: str = RANK_LABEL) -> tuple[str, str]:
    """openpi's `Einsum._make_lora_eqns` (axes = last two): (eqn_a, eqn_b) for a base equation."""
    match = re.fullmatch(r"(.*),(.*)->(.*)", eqn)
    if match is None or label in eqn:
        raise ValueError(f"unsupported einsum equation for LoRA: {eqn!r}")
    lhs, rhs, out = match.groups()
    a_label, b_label = rhs[-2], rhs[-1]
    a_rhs, a_out = rhs.replace(b_label, label), out.replace(b_label, label)
    b_rhs = rhs.replace(a_label, label)
    return f"{lhs},{a_rhs}->{a_out}", f"{a_out},{b_rhs}->{out}"


def delta_equation(eqn: str) -> str:
    """Einsum `A_labels,B_labels->W_labels` giving the weight change equal to the two LoRA einsums.

    In eqn_b, every label of B that is absent from eqn_a's output (and from the final output) is
    contracted inside eqn_b only, independently of A's axis of the same name: rename it.
    Digit labels (openpi's `2`, `3`) are mapped to letters, which numpy and torch require.
    """
    eqn_a, eqn_b = lora_equations(eqn)
    _, rhs, _ = re.fullmatch(r"(.*),(.*)->(.*)", eqn).groups()  # type: ignore[union-attr]
    _, a_rhs, a_out = re.fullmatch(r"(.*),(.*)->(.*)", eqn_a).groups()  # type: ignore[union-attr]
    _, b_rhs, out = re.fullmatch(r"(.*),(.*)->(.*)", eqn_b).groups()  # type: ignore[union-attr]
    used = set(eqn)
    free = [c for c in string.ascii_lowercase if c not in used]
    renamed = ""
    for c in b_rhs:
        if c in a_out or c in out:
            renamed += c
        else:
            renamed += free.pop(0)
    letters = {c: free.pop(0) for c in sorted(set(a_rhs + renamed + rhs)) if c.isdigit()}

    def fix(s: str) -> str:
        return "".join(letters.get(c, c) for c in s)

    return f"{fix(a_rhs)},{fix(renamed)}->{fix(rhs)}"


def merge_einsum_lora(eqn: str, w: Tensor, lora_a: Tensor, lora_b: Tensor, scale: float) -> Tensor:
    """`w + scale * dW` in float32 for one (un-stacked) openpi Einsum weight."""
    delta = torch.einsum(delta_equation(eqn), lora_a.float(), lora_b.float())
    if delta.shape != w.shape:
        raise ValueError(
            f"LoRA delta of {eqn} has shape {tuple(delta.shape)}, weight is {tuple(w.shape)}"
        )
    return w.float() + scale * delta


def merge_ffn_lora(w: Tensor, lora_a: Tensor, lora_b: Tensor) -> Tensor:
    """FeedForward `_dot`: `x @ W + (x @ A) @ B`, unscaled; batched over leading axes.

    The product is accumulated into a float32 copy of `w` by one BLAS call (addmm / baddbmm):
    no separate full-size product and sum."""
    merged = w.to(torch.float32, copy=True)
    a, b = lora_a.float(), lora_b.float()
    if merged.ndim == 2:
        return merged.addmm_(a, b)
    if merged.ndim == 3:
        return merged.baddbmm_(a, b)
    return merged.add_(torch.matmul(a, b))
