"""LoRA on chosen linear projections, merged back into plain `nn.Linear` at export.

`y = x Wᵀ + b + s · (x Aᵀ) Bᵀ` with A [r, in] (Kaiming-uniform, as peft / openpi init it),
B [out, r] zero-initialised (so a fresh adapter is the identity) and `s = alpha / rank`
(`alpha / √rank` with rslora), openpi `lora.py` semantics for a dense projection.
The base weight is frozen; only A and B train. Applied from outside the model (torchtitan style):
`apply_lora` swaps matching `nn.Linear` children for `LoRALinear`, `merge_lora` swaps them back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["LoRAConfig", "LoRALinear", "apply_lora", "lora_modules", "merge_lora"]


@dataclass(frozen=True)
class LoRAConfig:
    """`targets`: names of linear children to adapt (e.g. q_proj, v_proj, gate_proj);
    `scope`: a substring every adapted module's path must contain ("" = whole model, "engine." =
    both Gemma streams, ".expert." = the action expert only)."""

    rank: int = 16
    alpha: float = 16.0
    rslora: bool = False
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    scope: str = "engine."

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRAConfig.rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"LoRAConfig.alpha must be > 0, got {self.alpha}")
        if not self.targets:
            raise ValueError("LoRAConfig.targets must name at least one projection")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


class LoRALinear(nn.Module):
    """A frozen `base` linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, scaling: float) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scaling = scaling
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @property
    def weight(self) -> Tensor:  # callers read `.weight.dtype` / `.device` of a projection
        return self.base.weight

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: Tensor) -> Tensor:  # [..., in] -> [..., out]
        update = (x.to(self.lora_a.dtype) @ self.lora_a.T) @ self.lora_b.T
        return self.base(x) + (update * self.scaling).to(x.dtype)

    def delta_weight(self) -> Tensor:
        """`s · B A` [out, in], computed in fp32."""
        return (self.lora_b.float() @ self.lora_a.float()) * self.scaling

    def merged(self) -> nn.Linear:
        linear = nn.Linear(
            self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
            device=self.base.weight.device, dtype=self.base.weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            linear.weight.copy_((self.base.weight.float() + self.delta_weight()).to(linear.weight))
            if self.base.bias is not None:
                linear.bias.copy_(self.base.bias)
        return linear


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Replace every `nn.Linear` named in `config.targets` under `config.scope`; returns the paths
    adapted (raises when none matched, so a typo in `targets` cannot silently train nothing)."""
    adapted: list[str] = []
    for path, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            full = f"{path}.{name}" if path else name
            if name in config.targets and isinstance(child, nn.Linear) and config.scope in full:
                setattr(module, name, LoRALinear(child, config.rank, config.scaling))
                adapted.append(full)
    if not adapted:
        raise ValueError(
            f"LoRA matched no nn.Linear named {config.targets} under scope {config.scope!r}"
        )
    return adapted


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight (in place); returns how many were merged."""
    merged = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
                merged += 1
    return merged
