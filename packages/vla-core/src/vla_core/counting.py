"""Parameter counts of a pi0 / pi0.5 model, built on the meta device (no memory, milliseconds).

The published pi0 numbers (openpi / lerobot checkpoints, Understanding-PI0) count the action
expert's `lm_head` (vocab × expert width = 263,323,648 for pi0): the reference models allocate
it and never use it. Our model does not allocate it, so a count reports both: `expert` (what we
run) and `expert_with_lm_head` / `reference_total` (what openpi / lerobot checkpoints and
Understanding-PI0 report):

    python -m vla_core.counting          # full-size pi0, action dim 16 (published FLOPs setting)
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import torch
from torch import nn

from vla_core.config import PI0Config
from vla_core.flops import published_flops_config
from vla_core.pi0 import PI0Model

__all__ = [
    "ParameterCount",
    "analytic_parameter_count",
    "count_model_parameters",
    "count_parameters",
]

_GROUPS = (
    ("vision", re.compile(r"^vision_tower\.")),
    (
        "backbone",
        re.compile(r"^(embed_tokens\.|engine\.layers\.\d+\.backbone\.|engine\.backbone_norm\.)"),
    ),
    ("expert", re.compile(r"^(engine\.layers\.\d+\.expert\.|engine\.expert_norm\.)")),
    (
        "projections",
        re.compile(
            r"^(multi_modal_projector|action_in_proj|action_out_proj|state_proj"
            r"|action_time_mlp_in|action_time_mlp_out|time_mlp_in|time_mlp_out)\."
        ),
    ),
)


@dataclass(frozen=True)
class ParameterCount:
    """Parameters by block. `expert_lm_head` is not part of our model (reference checkpoints only).

    vision: SigLIP tower (patch conv, position embedding, encoder, post-LN);
    backbone: Gemma LM incl. the token embedding (its tied lm_head counted once);
    expert: action-expert layers + final norm; projections: SigLIP->LM projector and the
    action / state / time projections; other: anything else attached (e.g. a learned filter).
    """

    vision: int
    backbone: int
    expert: int
    projections: int
    expert_lm_head: int
    other: int = 0

    @property
    def total(self) -> int:
        """What our model allocates."""
        return self.vision + self.backbone + self.expert + self.projections + self.other

    @property
    def expert_with_lm_head(self) -> int:
        return self.expert + self.expert_lm_head

    @property
    def reference_total(self) -> int:
        """The reference checkpoints' count (with the unused expert lm_head)."""
        return self.total + self.expert_lm_head

    def table(self) -> str:
        rows = [
            ("SigLIP vision tower", self.vision),
            ("Gemma LM (backbone, embedding incl.)", self.backbone),
            ("action expert (as run)", self.expert),
            ("  + unused expert lm_head (reference only)", self.expert_lm_head),
            ("action expert incl. lm_head", self.expert_with_lm_head),
            ("projector + action/state/time projections", self.projections),
        ]
        if self.other:
            rows.append(("other", self.other))
        rows += [
            ("total (our model)", self.total),
            ("total incl. expert lm_head", self.reference_total),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value:>15,}" for name, value in rows)


def count_model_parameters(model: nn.Module, config: PI0Config | None = None) -> ParameterCount:
    """Group a built `PI0Model`'s parameters (shared parameters counted once)."""
    config = config if config is not None else getattr(model, "config", None)
    if not isinstance(config, PI0Config):
        raise ValueError("count_model_parameters needs the model's PI0Config")
    groups = dict.fromkeys(("vision", "backbone", "expert", "projections", "other"), 0)
    for name, param in model.named_parameters():
        group = next((g for g, pattern in _GROUPS if pattern.match(name)), "other")
        groups[group] += param.numel()
    return ParameterCount(expert_lm_head=config.expert.vocab_size * config.expert.width, **groups)


def count_parameters(config: PI0Config) -> ParameterCount:
    """Build `PI0Model(config)` on the meta device and count its parameters by block."""
    with torch.device("meta"):
        model = PI0Model(config)
    return count_model_parameters(model, config)


def analytic_parameter_count(config: PI0Config) -> ParameterCount:
    """The same count from the config's dimensions alone (a cross-check of the built model);
    PaliGemma (Gemma) and Gemma-3 (`vla_core.gemma3`) backbones."""
    vis, bb, ex = config.vision, config.backbone, config.expert

    siglip_layer = 4 * (vis.width * vis.width + vis.width) + 2 * vis.width * vis.mlp_dim
    siglip_layer += vis.mlp_dim + vis.width + 2 * 2 * vis.width  # fc biases, two LayerNorms
    vision = 3 * vis.patch_size**2 * vis.width + vis.width  # patch conv
    vision += vis.num_patches * vis.width + vis.depth * siglip_layer + 2 * vis.width

    def gemma_layer(g: object, adaptive: bool) -> int:
        width, heads, kv, hd, mlp = (
            g.width,  # type: ignore[attr-defined]
            g.num_heads,  # type: ignore[attr-defined]
            g.num_kv_heads,  # type: ignore[attr-defined]
            g.head_dim,  # type: ignore[attr-defined]
            g.mlp_dim,  # type: ignore[attr-defined]
        )
        attention = 2 * width * heads * hd + 2 * width * kv * hd
        norm = (width * 3 * width + 3 * width) if adaptive else width
        return attention + 3 * width * mlp + 2 * norm

    adaptive = config.is_pi05
    backbone_layer = gemma_layer(bb, False)
    if (
        config.engine.family == "gemma3"
    ):  # + per-head q/k norms and the two sandwich norms around the MLP
        backbone_layer += 2 * bb.head_dim + 2 * bb.width
    backbone = bb.vocab_size * bb.width + bb.depth * backbone_layer + bb.width
    expert_norm = (ex.width * 3 * ex.width + 3 * ex.width) if adaptive else ex.width
    expert = ex.depth * gemma_layer(ex, adaptive) + expert_norm

    d, a, s = ex.width, config.action_dim, config.state_dim
    projections = vis.width * bb.width + bb.width  # multi-modal projector
    projections += (a * d + d) + (d * a + a)  # action in / out
    if adaptive:
        projections += 2 * (d * d + d)  # time MLP
    else:
        projections += (s * d + d) + (2 * d * d + d) + (d * d + d)  # state, action-time MLP
    return ParameterCount(
        vision=vision,
        backbone=backbone,
        expert=expert,
        projections=projections,
        expert_lm_head=ex.vocab_size * ex.width,
    )


def main(argv: list[str] | None = None) -> int:
    """Print the count of full-size pi0 in the setting of the published FLOP count (action dim 16)."""
    del argv
    print(count_parameters(published_flops_config()).table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
