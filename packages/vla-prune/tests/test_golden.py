"""Golden equivalence with LightVLA's TokenPruner, written here from the issue's description.

The reference below is deliberately the simplest form (explicit softmax attention instead of
SDPA, division by √D, one_hot + soft − soft.detach() matmul), so it shares no code with the
package. Pinned: eval keep masks identical (exact), train choices identical (exact) and outputs
equal to 1e-6 (the reference's `1 + s − s` rounding), gradients to 1e-4 relative, fp32 on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vla_prune import ImageTokenPruner, PrunerConfig, TokenPruner

D = 64


def ref_rms(x: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    return (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)


def ref_score(patches: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    d = patches.shape[-1]
    p, t = ref_rms(patches), ref_rms(task)
    attn = torch.softmax(p @ t.transpose(-2, -1) / math.sqrt(d), dim=-1)
    q = ref_rms(attn @ t)
    return q @ p.transpose(-2, -1) / math.sqrt(d)


def ref_eval_mask(patches: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    score = ref_score(patches, task)
    mask = torch.zeros(patches.shape[:2], dtype=torch.bool)
    for b, row in enumerate(score.argmax(-1)):
        mask[b, row] = True
    return mask


def ref_train(
    patches: torch.Tensor, task: torch.Tensor, noise_scale: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    score = ref_score(patches, task)
    if noise_scale is not None:
        score = score + torch.rand_like(score) * noise_scale
    hard = F.one_hot(score.argmax(-1), num_classes=patches.shape[1]).to(score.dtype)
    soft = torch.softmax(score, dim=-1)
    weights = hard + soft - soft.detach()
    return weights.argmax(-1), weights @ patches


def _inputs(b: int, n: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # A shared component makes patches and task tokens correlated, so the scores are spread.
    common = torch.randn(1, 1, D, generator=g)
    patches = torch.randn(b, n, D, generator=g) + 0.5 * common
    task = torch.randn(b, t, D, generator=g) + 0.5 * common
    return patches, task


def _all_valid(b: int, n: int) -> torch.Tensor:
    return torch.ones(b, n, dtype=torch.bool)


REFERENCE = PrunerConfig(mask_task_padding=False)


@pytest.mark.parametrize("seed", range(5))
def test_eval_keep_mask_identical_to_reference(seed: int) -> None:
    b, n, t = 3, 96, 12
    patches, task = _inputs(b, n, t, seed)
    pruner = ImageTokenPruner(D, REFERENCE).eval()
    kept, kept_mask, keep_index = pruner(patches, _all_valid(b, n), task, _all_valid(b, t))
    expected = ref_eval_mask(patches, task)
    ours = torch.zeros(b, n, dtype=torch.bool)
    for i in range(b):
        ours[i, keep_index[i][kept_mask[i]]] = True
    assert torch.equal(ours, expected)
    for i in range(b):
        count = int(expected[i].sum())
        assert int(kept_mask[i].sum()) == count
        assert torch.equal(kept[i, :count], patches[i][expected[i]])  # ascending original order
    assert torch.equal(pruner.last_stats.union_size, expected.sum(-1))


def test_score_matches_reference_formula() -> None:
    patches, task = _inputs(2, 40, 9, seed=11)
    pruner = ImageTokenPruner(D, REFERENCE)
    ours = pruner.score(patches, _all_valid(2, 40), task, _all_valid(2, 9))
    torch.testing.assert_close(ours, ref_score(patches, task), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("noise_scale", [None, 0.5, 1.0])
def test_train_output_and_gradients_match_reference(noise_scale: float | None) -> None:
    b, n, t = 2, 64, 10
    patches, task = _inputs(b, n, t, seed=3)
    upstream = torch.randn(b, n, D, generator=torch.Generator().manual_seed(5))

    ours_p, ours_t = patches.clone().requires_grad_(), task.clone().requires_grad_()
    pruner = ImageTokenPruner(D, REFERENCE).train()
    pruner.set_noise_scale(noise_scale)
    torch.manual_seed(123)
    out, kept_mask, choice = pruner(ours_p, _all_valid(b, n), ours_t, _all_valid(b, t))
    (out * upstream).sum().backward()

    ref_p, ref_t = patches.clone().requires_grad_(), task.clone().requires_grad_()
    torch.manual_seed(123)
    ref_choice, ref_out = ref_train(ref_p, ref_t, noise_scale)
    (ref_out * upstream).sum().backward()

    assert torch.equal(choice, ref_choice)
    assert kept_mask.all()
    assert out.shape == (b, n, D)
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_p.grad, ref_p.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours_t.grad, ref_t.grad, rtol=1e-4, atol=1e-5)
    assert ours_t.grad.abs().sum() > 0  # the score path really carries gradient to the task


def ref_token_pruner(
    tokens: torch.Tensor, num_patches: int, training: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LightVLA's [cls, patches, task] forward with arange positions and an all-ones mask."""
    b, length, d = tokens.shape
    ids = torch.arange(length).expand(b, -1)
    mask = torch.ones(b, length, dtype=torch.long)
    sizes = [1, num_patches, length - num_patches - 1]
    cls_tok, patches, task = tokens.split(sizes, dim=1)
    cls_id, patch_id, task_id = ids.split(sizes, dim=1)
    cls_m, patch_m, task_m = mask.split(sizes, dim=1)
    rows = torch.arange(b)[:, None]
    if not training:
        keep = ref_eval_mask(patches, task)
        patches = patches[keep].view(b, -1, d)
        patch_id = patch_id[keep].view(b, -1)
        patch_m = patch_m[keep].view(b, -1)
    else:
        choice, patches = ref_train(patches, task, None)
        patch_id, patch_m = patch_id[rows, choice], patch_m[rows, choice]
    return (
        torch.cat([cls_tok, patches, task], 1),
        torch.cat([cls_id, patch_id, task_id], 1),
        torch.cat([cls_m, patch_m, task_m], 1),
    )


@pytest.mark.parametrize("training", [False, True])
def test_token_pruner_matches_reference_layout(training: bool) -> None:
    n, t = 48, 8
    patches, task = _inputs(1 if not training else 2, n, t, seed=21)
    cls_tok = torch.randn(patches.shape[0], 1, D)
    tokens = torch.cat([cls_tok, patches, task], dim=1)
    pruner = TokenPruner(D, n, REFERENCE).train(training)
    mask_in = torch.ones(tokens.shape[:2], dtype=torch.long)
    ours = pruner(tokens, None, mask_in)
    ref = ref_token_pruner(tokens, n, training)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-6, atol=1e-6)
    assert torch.equal(ours[1], ref[1])
    assert torch.equal(ours[2], ref[2])
    assert ours[2].dtype == torch.long
    if not training:
        assert ours[0].shape[1] < tokens.shape[1]
        assert torch.equal(ours[0], ref[0])  # eval is a pure gather: bit-exact
