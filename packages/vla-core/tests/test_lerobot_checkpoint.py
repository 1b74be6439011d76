"""A pi0.5 checkpoint written by lerobot 0.6.1's own `PI05Policy.save_pretrained` (issue #16).

`fixtures/lerobot_pi05/` comes from `packages/vla-train/tests/fixtures/make_lerobot_fixtures.py`
(lerobot 0.6.1, CPU, fp32): a tiny random pi0.5 after one AdamW step, so — as in every real
lerobot checkpoint — `paligemma.lm_head.weight` differs from the token embedding. Pinned:
- `load_state_dict(..., layout="lerobot")` accepts it, takes `embed_tokens` and reports the
  lm_head as dropped by name (the openpi layout still refuses the same pair);
- with the loaded weights our model reproduces the outputs lerobot's reloaded policy gave for
  the same inputs: the per-element training loss for fixed noise / time, and `sample_actions`
  (3 Euler steps, fixed noise). Tolerance: max|Δ| <= 1e-5 · max|reference| (fp32; the two
  implementations differ in operation order only). Measured: loss 1.3e-7, sample_actions 7e-8;
  taking the saved lm_head as the embedding instead gives 1.2e-2 on the loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vla_core.config import GemmaConfig, JointEngineConfig, PI0Config, SiglipConfig
from vla_core.pi0 import Observation, PI0Model
from vla_core.state_dict import convert_state_dict, load_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_pi05"
PREFIX = "model.paligemma_with_expert.paligemma."
LM_HEAD = PREFIX + "lm_head.weight"
EMBED = PREFIX + "model.language_model.embed_tokens.weight"
RTOL = 1e-5


def lerobot_tiny_config() -> PI0Config:
    """The widths the fixture script gives lerobot's PI05Policy (see its docstring)."""
    engine = JointEngineConfig(
        backbone=GemmaConfig(
            width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16, vocab_size=128
        ),
        expert=GemmaConfig(
            width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16, vocab_size=128
        ),
        attention_implementation="eager",
    )
    vision = SiglipConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=14, image_size=56)
    return PI0Config(
        variant="pi05", engine=engine, vision=vision, action_dim=32, state_dim=32,
        action_horizon=5, max_token_len=12, num_cameras=2,
    )  # fmt: skip


def test_saved_lm_head_differs_from_the_embedding() -> None:
    """The fixture really has the property this issue is about (else the tests below are moot)."""
    tensors = load_file(str(FIXTURE / "model.safetensors"))
    assert not torch.equal(tensors[LM_HEAD], tensors[EMBED])


def test_lerobot_layout_takes_embed_tokens_and_drops_lm_head_by_name() -> None:
    tensors = load_file(str(FIXTURE / "model.safetensors"))
    converted = convert_state_dict(tensors, lerobot_tiny_config(), "lerobot")
    assert torch.equal(converted.tensors["embed_tokens.weight"], tensors[EMBED])
    assert LM_HEAD in converted.dropped
    assert "model.paligemma_with_expert.gemma_expert.lm_head.weight" in converted.dropped
    openpi = {k.removeprefix("model."): v for k, v in tensors.items()}
    with pytest.raises(ValueError, match="tied"):
        convert_state_dict(openpi, lerobot_tiny_config(), "openpi")


def _max_rel(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


@torch.no_grad()
def test_loaded_checkpoint_reproduces_lerobot_outputs() -> None:
    torch.manual_seed(0)
    model = PI0Model(lerobot_tiny_config()).eval()
    load_state_dict(model, load_file(str(FIXTURE / "model.safetensors")), "lerobot")
    ref = load_file(str(FIXTURE / "reference.safetensors"))
    observation = Observation(
        images=torch.stack([ref["image_0"], ref["image_1"]], dim=1),  # [B, C, 3, 56, 56]
        tokens=ref["tokens"],
        token_mask=ref["token_mask"],
        image_masks=torch.stack([ref["image_mask_0"], ref["image_mask_1"]], dim=1),
        state=None,
    )
    losses = model(observation, ref["actions"], noise=ref["noise"], time=ref["time"])
    sampled = model.sample_actions(observation, noise=ref["noise"], num_steps=3)
    loss_err, sample_err = _max_rel(losses, ref["losses"]), _max_rel(sampled, ref["sampled"])
    assert loss_err <= RTOL, f"loss max rel err {loss_err:.2e}"
    assert sample_err <= RTOL, f"sample_actions max rel err {sample_err:.2e}"
