"""FLOPs of one `sample_actions` call: a closed form, a profiler-compatible reconstruction, and a
`torch.utils.flop_counter.FlopCounterMode` measurement.

Convention: FLOPs = 2·MACs for every matmul / conv / attention product (what FlopCounterMode
counts); element-wise work is left out of the closed form.

Three numbers are worth keeping apart (Understanding-PI0's
`reports/flops.log`, a torch-profiler run of lerobot's early PI0Policy on an A100):

- `analytic_flops(...).total` — every matmul, SigLIP attention and the patch conv included. For the
  published setting (3×224² images, 48 prompt tokens, action dim 16, 10 steps) this is 4,379,061,288,960.
- `profiler_matched_flops(...)` — what that profiler printed, 4,354,614,038,072: it counts mm / addmm /
  bmm as 2·M·N·K and `aten::mul` / `aten::add` as the numel of their *first* argument, and misses
  SigLIP's SDPA attention and the patch conv. Reproduced op by op from the profiler rows so the
  published number can be checked, not because those element-wise counts mean much.
- `measure_flops(fn, ...)` — FlopCounterMode on our own model (meta device is fine: it only needs
  shapes); it must agree with `analytic_flops` exactly (pinned in tests/test_flops.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vla_core.config import PI0Config
from vla_core.pi0 import Observation, PI0Model

__all__ = [
    "FlopBreakdown",
    "MeasuredFlops",
    "analytic_flops",
    "measure_flops",
    "measure_sample_actions_flops",
    "profiler_matched_flops",
    "published_flops_config",
]


def published_flops_config() -> PI0Config:
    """The setting of the published pi0 FLOP count: full-size pi0, 3 cameras, 48 prompt tokens,
    state padded to 32, action padded to 16 (Understanding-PI0's profiler run)."""
    return PI0Config(action_dim=16, state_dim=32, max_token_len=48, num_cameras=3)


@dataclass(frozen=True)
class FlopBreakdown:
    """Closed-form FLOPs (2·MACs) of one `sample_actions` call, by block; `steps` already applied."""

    vision_linear: int  # SigLIP q/k/v/o + MLP, all images
    vision_attention: int  # SigLIP QKᵀ and AV
    patch_embedding: int  # the 14×14 patch conv
    projector: int  # SigLIP width -> backbone width
    prefix_linear: int  # backbone q/k/v/o + MLP over the prefix tokens
    prefix_attention: int  # backbone QKᵀ and AV
    expert_linear: int  # expert q/k/v/o + MLP over the suffix tokens, all steps
    expert_attention: int  # suffix queries x (prefix + suffix) keys, all steps
    suffix_projections: int  # action/state/time projections (+ pi0.5 adaRMS dense), all steps
    prefix_tokens: int
    suffix_tokens: int
    steps: int

    @property
    def vision(self) -> int:
        return self.vision_linear + self.vision_attention + self.patch_embedding + self.projector

    @property
    def prefix(self) -> int:
        return self.prefix_linear + self.prefix_attention

    @property
    def expert(self) -> int:
        return self.expert_linear + self.expert_attention + self.suffix_projections

    @property
    def total(self) -> int:
        return self.vision + self.prefix + self.expert

    def as_dict(self) -> dict[str, int]:
        out = asdict(self)
        out.update(vision=self.vision, prefix=self.prefix, expert=self.expert, total=self.total)
        return out


def _prompt_tokens(config: PI0Config, prompt_tokens: int | None) -> int:
    assert config.max_token_len is not None  # set by PI0Config.__post_init__
    return config.max_token_len if prompt_tokens is None else prompt_tokens


def analytic_flops(
    config: PI0Config,
    *,
    num_images: int | None = None,
    prompt_tokens: int | None = None,
    num_steps: int = 10,
    batch_size: int = 1,
) -> FlopBreakdown:
    """Closed-form FLOPs of `sample_actions` (prefix once + `num_steps` expert passes).

    Every prompt token is counted (padding included: the engine runs on the padded length), all
    `num_images` cameras are encoded. Suffix = [state token] + action tokens (pi0) or action tokens
    only (pi0.5).
    """
    n_img = config.num_cameras if num_images is None else num_images
    n_txt = _prompt_tokens(config, prompt_tokens)
    vis, bb, ex = config.vision, config.backbone, config.expert
    n_patch = vis.num_patches
    horizon = config.action_horizon
    b = batch_size

    prefix = n_img * n_patch + n_txt
    suffix = horizon + (0 if config.is_pi05 else 1)
    keys = prefix + suffix

    def gemma_linear_per_token(g: Any) -> int:
        qkvo = g.width * g.num_heads * g.head_dim * 2 + g.width * g.num_kv_heads * g.head_dim * 2
        return 2 * g.depth * (qkvo + 3 * g.width * g.mlp_dim)

    def attention(g: Any, q_len: int, k_len: int) -> int:
        # QKᵀ and AV, each 2·Lq·Lk·(H·D), per layer.
        return 2 * 2 * g.depth * q_len * k_len * g.num_heads * g.head_dim

    vision_linear = (
        2 * n_img * n_patch * vis.depth * (4 * vis.width**2 + 2 * vis.width * vis.mlp_dim)
    )
    vision_attention = 2 * 2 * n_img * vis.depth * n_patch * n_patch * vis.width
    patch_embedding = 2 * n_img * n_patch * 3 * vis.patch_size**2 * vis.width
    projector = 2 * n_img * n_patch * vis.width * bb.width

    prefix_linear = prefix * gemma_linear_per_token(bb)
    prefix_attention = attention(bb, prefix, prefix)

    expert_linear = num_steps * suffix * gemma_linear_per_token(ex)
    expert_attention = num_steps * attention(ex, suffix, keys)

    d, a, s = ex.width, config.action_dim, config.state_dim
    if config.is_pi05:
        # action_in, action_out per action token; time MLP and adaRMS dense once per sample.
        per_step = (
            2 * horizon * (a * d + d * a) + 2 * (2 * d * d) + 2 * (2 * ex.depth + 1) * d * 3 * d
        )
    else:
        # action_in, action_time_mlp_in (2d -> d), _out, action_out per action token; state_proj.
        per_step = 2 * horizon * (a * d + 2 * d * d + d * d + d * a) + 2 * s * d
    suffix_projections = num_steps * per_step

    return FlopBreakdown(
        vision_linear=b * vision_linear,
        vision_attention=b * vision_attention,
        patch_embedding=b * patch_embedding,
        projector=b * projector,
        prefix_linear=b * prefix_linear,
        prefix_attention=b * prefix_attention,
        expert_linear=b * expert_linear,
        expert_attention=b * expert_attention,
        suffix_projections=b * suffix_projections,
        prefix_tokens=prefix,
        suffix_tokens=suffix,
        steps=num_steps,
    )


def profiler_matched_flops(
    config: PI0Config | None = None,
    *,
    num_steps: int = 10,
    real_action_dim: int = 7,
    real_state_dim: int = 13,
) -> dict[str, int]:
    """Reconstruct, op by op, the torch-profiler total of Understanding-PI0 (batch 1, pi0).

    That profiler (lerobot's first PI0Policy port, transformers 4.x Gemma / SigLIP modules)
    counted mm / addmm / bmm as 2·M·N·K and every out-of-place `aten::mul` / `aten::add` as the
    numel of its first argument; SigLIP ran SDPA and the patch conv was not counted. The terms
    below are the rows of its `reports/flops.log`, written as functions of the config; with
    `published_flops_config()` the total is 4,354,614,038,072. `real_action_dim` / `real_state_dim`
    are the unpadded dims the policy (un)normalised (LIBERO-like 7 / 13 in that run).
    """
    config = published_flops_config() if config is None else config
    if config.is_pi05:
        raise ValueError("profiler_matched_flops reconstructs a pi0 profile; got variant='pi05'")
    full = analytic_flops(config, num_steps=num_steps)
    vis, bb, ex = config.vision, config.backbone, config.expert
    n_img, n_patch = config.num_cameras, vis.num_patches
    p, s = full.prefix_tokens, full.suffix_tokens
    k = p + s
    h, hd, kv = bb.num_heads, bb.head_dim, bb.num_kv_heads
    half = hd // 2
    n_txt = _prompt_tokens(config, None)
    horizon, a = config.action_horizon, config.action_dim
    image_pixels = 3 * vis.image_size**2

    def gemma_elementwise(tokens: int, g: Any, keys: int) -> int:
        norms = 2 * g.depth + 1  # input + post-attention per layer, final norm
        return (
            g.depth * tokens * g.mlp_dim  # gelu(gate) * up
            + 2 * g.depth * h * tokens * keys  # logits * scale, logits + additive mask
            + 2 * norms * tokens * g.width  # x * rsqrt(var), * (1 + w)
            + norms * (tokens + g.width)  # var + eps, 1 + w
            + 2 * g.depth * tokens * g.width  # two residual adds
            + 3 * g.depth * (h + kv) * tokens * hd  # RoPE: q*cos, rot(q)*sin, sum (q and k)
            + 2 * tokens * hd  # cos, sin * attention_scaling, once per forward
        )

    matmuls = (
        full.vision_linear
        + full.projector
        + full.prefix
        + full.expert_linear
        + full.expert_attention
        + full.suffix_projections
    )
    rotary_bmm = 2 * half * p + num_steps * 2 * half * s  # inv_freq @ positions
    elementwise = (
        gemma_elementwise(p, bb, p)
        + num_steps * gemma_elementwise(s, ex, k)
        + n_txt * bb.width  # text embedding * sqrt(width)
        + p  # 2-D pad mask product
        + (2 * vis.depth + 1) * n_img * n_patch * vis.width  # SigLIP residuals + position add
        + n_img * image_pixels  # image * 2 (to [-1, 1])
        + num_steps
        * (
            horizon * a  # x_t + dt * v_t (add)
            + 1  # dt * v_t (first argument is the 0-d dt)
            + ex.width // 2  # sinusoid: freq * t
            + 4 * (ex.width // 2)  # sinusoid period arithmetic
            + 1  # suffix positions: offset + cumsum
            + s  # 2-D pad mask product of the suffix
        )
        + 2 * horizon * real_action_dim  # unnormalise actions: * std, + mean
        + real_state_dim  # state std + eps
        + real_action_dim  # action std + eps
    )
    return {
        "matmuls": matmuls,
        "rotary_bmm": rotary_bmm,
        "elementwise": elementwise,
        "total": matmuls + rotary_bmm + elementwise,
        "not_counted_vision_attention": full.vision_attention,
        "not_counted_patch_embedding": full.patch_embedding,
    }


@dataclass
class MeasuredFlops:
    """FlopCounterMode result: total, per aten op, and per top-level module."""

    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    by_module: dict[str, int] = field(default_factory=dict)


def measure_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, MeasuredFlops]:
    """Run `fn(*args, **kwargs)` under `FlopCounterMode` and return `(result, MeasuredFlops)`.

    Works on meta tensors (a full-size pi0 costs no memory or time). `by_module` keys are the
    counter's module names ("Global" is the total); `by_op` sums over modules.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        result = fn(*args, **kwargs)
    counts = counter.get_flop_counts()
    by_op: dict[str, int] = {}
    for op, value in counts.get("Global", {}).items():
        by_op[str(op)] = int(value)
    by_module = {name: int(sum(ops.values())) for name, ops in counts.items()}
    return result, MeasuredFlops(
        total=int(counter.get_total_flops()), by_op=by_op, by_module=by_module
    )


def measure_sample_actions_flops(
    config: PI0Config,
    *,
    num_steps: int = 10,
    batch_size: int = 1,
    prompt_tokens: int | None = None,
    device: str | torch.device = "meta",
) -> MeasuredFlops:
    """FlopCounterMode count of `PI0Model(config).sample_actions` on synthetic inputs.

    On the default meta device nothing is allocated or computed (a full-size pi0 takes seconds),
    so this is the measured counterpart of `analytic_flops(config, ...)`. flex_attention cannot
    run on meta tensors; there the count uses sdpa (the same products).
    """
    if torch.device(device).type == "meta" and config.engine.attention_implementation == "flex":
        config = config.replace(attention_implementation="sdpa")

    n_txt = _prompt_tokens(config, prompt_tokens)
    size = config.vision.image_size
    with torch.device(device):
        model = PI0Model(config).eval()
        cams = config.num_cameras
        observation = Observation(
            images=torch.zeros(batch_size, cams, 3, size, size),
            tokens=torch.zeros(batch_size, n_txt, dtype=torch.long),
            token_mask=torch.ones(batch_size, n_txt, dtype=torch.bool),
            image_masks=torch.ones(batch_size, cams, dtype=torch.bool),
            state=torch.zeros(batch_size, config.state_dim),
        )
        noise = torch.zeros(batch_size, config.action_horizon, config.action_dim)
    return measure_flops(model.sample_actions, observation, noise=noise, num_steps=num_steps)[1]
