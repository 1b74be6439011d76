"""Tiny configurations and random inputs for tests (importable by other packages' tests).

Tiny presets keep every structural feature of the real model: N·H != width in the expert,
GQA (4 query / 2 kv heads), a SigLIP tower (56² -> 16 tokens per camera), unequal stream widths.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from vla_core.config import GEMMA_PRESETS, SIGLIP_PRESETS, JointEngineConfig, PI0Config
from vla_core.layers import RMSNorm
from vla_core.pi0 import Observation

__all__ = ["perturb_adarms", "random_actions", "random_observation", "tiny_pi0_config"]


def tiny_pi0_config(
    variant: Literal["pi0", "pi05"] = "pi0",
    *,
    attention_implementation: str = "eager",
    **overrides: Any,
) -> PI0Config:
    """A seconds-on-CPU pi0 / pi0.5: backbone w48, expert w32, depth 2, 2 cameras, horizon 5."""
    engine = JointEngineConfig(
        backbone=GEMMA_PRESETS["gemma_tiny"],
        expert=GEMMA_PRESETS["gemma_tiny_expert"],
        attention_implementation=attention_implementation,
    )
    fields: dict[str, Any] = {
        "variant": variant,
        "engine": engine,
        "vision": SIGLIP_PRESETS["siglip_tiny"],
        "action_dim": 6,
        "state_dim": 7,
        "action_horizon": 5,
        "max_token_len": 12,
        "num_cameras": 2,
    }
    fields.update(overrides)
    return PI0Config(**fields)


def random_observation(
    config: PI0Config,
    batch_size: int = 2,
    *,
    prompt_lengths: list[int] | None = None,
    camera_present: list[list[bool]] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Observation:
    """Random images in [-1, 1], right-padded prompts (default: the last sample is 3 tokens
    shorter), random state. `camera_present[b][c]` masks cameras."""
    gen = torch.Generator().manual_seed(seed)
    size = config.vision.image_size
    cams = config.num_cameras
    length = config.max_token_len
    assert length is not None
    images = torch.rand(batch_size, cams, 3, size, size, generator=gen) * 2 - 1
    if prompt_lengths is None:
        prompt_lengths = [length] * batch_size
        prompt_lengths[-1] = max(1, length - 3)
    if len(prompt_lengths) != batch_size or max(prompt_lengths) > length:
        raise ValueError(f"prompt_lengths {prompt_lengths} do not fit B={batch_size}, T={length}")
    tokens = torch.randint(1, config.backbone.vocab_size, (batch_size, length), generator=gen)
    token_mask = torch.arange(length)[None, :] < torch.tensor(prompt_lengths)[:, None]
    tokens = tokens * token_mask
    if camera_present is None:
        image_masks = torch.ones(batch_size, cams, dtype=torch.bool)
    else:
        image_masks = torch.tensor(camera_present, dtype=torch.bool)
    state = torch.randn(batch_size, config.state_dim, generator=gen)
    return Observation(
        images=images.to(device),
        tokens=tokens.to(device),
        token_mask=token_mask.to(device),
        image_masks=image_masks.to(device),
        state=state.to(device),
    )


def random_actions(config: PI0Config, batch_size: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, config.action_horizon, config.action_dim, generator=gen)


@torch.no_grad()
def perturb_adarms(model: nn.Module, std: float = 0.05, seed: int = 0) -> int:
    """Randomise every AdaRMS `dense` (zero-initialised, so a fresh pi0.5 ignores time);
    returns how many were perturbed."""
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for module in model.modules():
        if isinstance(module, RMSNorm) and module.dense is not None:
            for param in (module.dense.weight, module.dense.bias):
                param.add_(torch.randn(param.shape, generator=gen).to(param) * std)
            count += 1
    return count
