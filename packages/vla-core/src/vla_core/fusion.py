"""Load-time projection fusion: q/k/v -> one `qkv_proj`, gate/up -> one `gate_up_proj`.

A transform of a *loaded* model (the Dexmal / realtime-vla "fused QKV" simplification): the
checkpoint layouts (`vla`, `openpi`, `lerobot`, `transformers`) are untouched and a fused model
computes the same function as its unfused source — each output column is the same dot product,
only the number of kernel launches drops (3 -> 1 and 2 -> 1 per stream and layer, which is what
matters in the launch-bound batch-1 denoise loop). A fused model's `state_dict` has the fused
names, so save / export the unfused model (or reload the checkpoint) rather than a fused one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_core.layers import GemmaAttentionProjections, GemmaMLP

__all__ = ["FusedAttentionProjections", "FusedGemmaMLP", "fuse_projections"]


class FusedAttentionProjections(nn.Module):
    """`GemmaAttentionProjections` with q/k/v stacked into one `qkv_proj` (rows q ‖ k ‖ v)."""

    def __init__(self, source: GemmaAttentionProjections) -> None:
        super().__init__()
        q, k, v = source.q_proj, source.k_proj, source.v_proj
        if q.bias is not None or k.bias is not None or v.bias is not None:
            raise ValueError("fuse_projections expects bias-free q/k/v projections (Gemma)")
        self.split_sizes: list[int] = [q.out_features, k.out_features, v.out_features]
        weight = torch.cat([q.weight, k.weight, v.weight], dim=0)
        self.qkv_proj: nn.Linear = nn.Linear(
            q.in_features, weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            self.qkv_proj.weight.copy_(weight)
        self.qkv_proj.weight.requires_grad_(q.weight.requires_grad)
        self.o_proj = source.o_proj

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, L, width] -> q [B, L, H·D], k / v [B, L, Hkv·D] (views of one product)."""
        query, key, value = self.qkv_proj(x).split(self.split_sizes, dim=-1)
        return query, key, value


class FusedGemmaMLP(nn.Module):
    """`GemmaMLP` with gate/up stacked into one `gate_up_proj` (rows gate ‖ up)."""

    def __init__(self, source: GemmaMLP) -> None:
        super().__init__()
        gate, up = source.gate_proj, source.up_proj
        weight = torch.cat([gate.weight, up.weight], dim=0)
        self.mlp_dim = gate.out_features
        self.gate_up_proj = nn.Linear(
            gate.in_features, weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            self.gate_up_proj.weight.copy_(weight)
        self.gate_up_proj.weight.requires_grad_(gate.weight.requires_grad)
        self.down_proj = source.down_proj

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).split(self.mlp_dim, dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


def fuse_projections(model: nn.Module, *, attention: bool = True, mlp: bool = True) -> int:
    """Replace, in place, every plain `GemmaAttentionProjections` (attention) and `GemmaMLP` (mlp)
    under `model` by its fused form; returns how many modules were replaced.

    Subclasses are left alone (e.g. Gemma-3's projections with q/k norms keep separate q/k/v;
    its `GemmaMLP`s are fused). Weights keep their dtype and device; the unfused weights are
    released. Apply before `torch.compile` / the fast sampler, never to a model you will save.
    """
    replacements: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if attention and type(child) is GemmaAttentionProjections:
                replacements.append((parent, name, FusedAttentionProjections(child)))
            elif mlp and type(child) is GemmaMLP:
                replacements.append((parent, name, FusedGemmaMLP(child)))
    for parent, name, fused in replacements:
        setattr(parent, name, fused)
    return len(replacements)
