"""ImageTokenPruner behaviour beyond the reference: exact straight-through, batching, masks,
budgets, min_keep, static shapes, stats, validation. Exact comparisons unless a tolerance is
stated; fp32 on CPU unless the test is about bf16."""

from __future__ import annotations

import math

import pytest
import torch

from vla_prune import ImageTokenPruner, PrunerConfig, TokenPruner, lightvla_scores
from vla_prune.selection import straight_through_select

D = 32


def _inputs(b: int, n: int, t: int, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(1, 1, D, generator=g)
    patches = (torch.randn(b, n, D, generator=g) + 0.5 * common).to(dtype)
    task = (torch.randn(b, t, D, generator=g) + 0.5 * common).to(dtype)
    return patches, torch.ones(b, n, dtype=torch.bool), task, torch.ones(b, t, dtype=torch.bool)


# --- straight-through ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_straight_through_forward_is_bit_exact_selection(dtype: torch.dtype) -> None:
    patches, image_mask, task, task_mask = _inputs(2, 40, 6, seed=1, dtype=dtype)
    pruner = ImageTokenPruner(D).train()
    pruner.set_noise_scale(1.0)
    out, _, choice = pruner(patches, image_mask, task, task_mask)
    assert out.dtype == dtype
    expected = torch.stack([patches[b, choice[b]] for b in range(2)])
    assert torch.equal(out, expected)


def test_reference_style_weights_are_not_exact_in_bf16() -> None:
    """Why the gather form exists: in a bf16 model the reference's `one_hot + s - s` is bf16,
    `1 + s` rounds, and `(…) @ patches` drifts off the chosen patch."""
    patches, *_ = _inputs(1, 64, 4, seed=2, dtype=torch.bfloat16)
    score = (torch.randn(1, 64, 64) * 3).to(torch.bfloat16)
    soft = torch.softmax(score, -1)  # bf16, as in the reference without autocast
    weights = torch.nn.functional.one_hot(score.argmax(-1), 64) + soft - soft.detach()
    assert weights.dtype == torch.bfloat16
    reference = weights @ patches
    _, exact = straight_through_select(score, patches)
    assert not torch.equal(reference, exact)
    assert torch.equal(exact, patches[0, score.argmax(-1)[0]][None])


def test_straight_through_gradient_is_the_softmax_jacobian_path() -> None:
    g = torch.Generator().manual_seed(4)
    score = torch.randn(2, 16, 16, generator=g).requires_grad_()
    patches = torch.randn(2, 16, 8, generator=g).requires_grad_()
    upstream = torch.randn(2, 16, 8, generator=g)
    choice, out = straight_through_select(score, patches)
    (out * upstream).sum().backward()
    # d/dS of <g, soft @ P> through the softmax Jacobian; d/dP routes g to the chosen patch.
    s = torch.softmax(score.detach(), -1)
    gp = upstream @ patches.detach().transpose(-2, -1)
    expected_ds = s * (gp - (gp * s).sum(-1, keepdim=True))
    torch.testing.assert_close(score.grad, expected_ds, rtol=1e-5, atol=1e-6)
    assert score.grad.abs().max() > 1e-3
    expected_dp = torch.zeros_like(patches)
    for b in range(2):
        expected_dp[b].index_add_(0, choice[b], upstream[b])
    torch.testing.assert_close(patches.grad, expected_dp, rtol=1e-6, atol=1e-6)


# --- batching -----------------------------------------------------------------------------------


def _masked_batch():
    patches, image_mask, task, task_mask = _inputs(4, 48, 10, seed=7)
    image_mask[1, 16:32] = False  # a missing camera
    image_mask[3, :16] = False
    task_mask[0, 6:] = False  # padded prompts
    task_mask[2, 3:] = False
    return patches, image_mask, task, task_mask


@pytest.mark.parametrize(
    "config",
    [
        PrunerConfig(),
        PrunerConfig(min_keep=6, budget_scope="per_camera", num_cameras=3),
        PrunerConfig(keep_ratio=0.25, budget_scope="per_camera", num_cameras=3),
        PrunerConfig(keep_tokens=10),
    ],
)
def test_batch_equals_per_sample_results(config: PrunerConfig) -> None:
    patches, image_mask, task, task_mask = _masked_batch()
    pruner = ImageTokenPruner(D, config).eval()
    kept, kept_mask, keep_index = pruner(patches, image_mask, task, task_mask)
    counts = kept_mask.sum(-1)
    assert kept.shape[1] == int(counts.max()) or config.has_budget
    for b in range(4):
        one = pruner(
            patches[b : b + 1], image_mask[b : b + 1], task[b : b + 1], task_mask[b : b + 1]
        )
        c = int(counts[b])
        assert one[1].sum() == c
        assert torch.equal(keep_index[b, :c], one[2][0, :c])
        assert torch.equal(kept[b, :c], one[0][0, :c])
        assert torch.equal(kept[b, :c], patches[b, keep_index[b, :c]])
        assert not kept_mask[b, c:].any() and kept_mask[b, :c].all()  # valid slots come first
        assert (kept[b, c:] == 0).all()  # padded slots are zero
        assert image_mask[b, keep_index[b, :c]].all()  # only valid tokens kept
        assert (keep_index[b, :c].diff() > 0).all()  # ascending original order
        assert ((keep_index >= 0) & (keep_index < 48)).all()


def test_position_ids_follow_keep_index() -> None:
    """Eval: kept tokens keep original ids with gaps; train: each slot has its choice's id."""
    patches, image_mask, task, task_mask = _masked_batch()
    pruner = ImageTokenPruner(D).eval()
    _kept, kept_mask, keep_index = pruner(patches, image_mask, task, task_mask)
    orig_pos = torch.arange(48).expand(4, -1) + 5  # e.g. cumsum(pad) - 1 with a 5-token offset
    pos = orig_pos.gather(1, keep_index)
    for b in range(4):
        c = int(kept_mask[b].sum())
        assert torch.equal(pos[b, :c], keep_index[b, :c] + 5)
    pruner.train()
    out, train_mask, choice = pruner(patches, image_mask, task, task_mask)
    assert out.shape == patches.shape and train_mask.shape == image_mask.shape
    assert torch.equal(train_mask, image_mask & image_mask.gather(1, choice))
    assert image_mask.gather(1, choice)[image_mask.any(-1)].all()  # never chooses a missing camera


# --- masks --------------------------------------------------------------------------------------


def test_padded_task_tokens_do_not_change_selection() -> None:
    patches, image_mask, task, task_mask = _inputs(2, 64, 7, seed=9)
    junk = torch.randn(2, 20, D) * 3 + task.mean(1, keepdim=True)  # padding embeddings
    padded_task = torch.cat([task, junk], dim=1)
    padded_mask = torch.cat([task_mask, torch.zeros(2, 20, dtype=torch.bool)], dim=1)

    pruner = ImageTokenPruner(D).eval()
    base = pruner(patches, image_mask, task, task_mask)
    padded = pruner(patches, image_mask, padded_task, padded_mask)
    assert torch.equal(base[2], padded[2]) and torch.equal(base[1], padded[1])
    s0 = pruner.score(patches, image_mask, task, task_mask)
    s1 = pruner.score(patches, image_mask, padded_task, padded_mask)
    torch.testing.assert_close(s0, s1, rtol=1e-5, atol=1e-5)

    # The reference (no task mask) is changed by the same padding: the test can fail.
    reference = ImageTokenPruner(D, PrunerConfig(mask_task_padding=False)).eval()
    unmasked = reference.score(patches, image_mask, padded_task, padded_mask)
    assert (unmasked - s0).abs().max() > 1e-2


def test_all_masked_task_attends_everything_instead_of_nan() -> None:
    patches, _image_mask, task, task_mask = _inputs(1, 16, 4)
    score = lightvla_scores(patches, task, torch.zeros_like(task_mask))
    torch.testing.assert_close(score, lightvla_scores(patches, task, None))


def test_invalid_image_tokens_are_never_chosen_and_do_not_vote() -> None:
    patches, image_mask, task, task_mask = _inputs(2, 48, 6, seed=12)
    image_mask[:, 16:32] = False
    pruner = ImageTokenPruner(D).eval()
    _, kept_mask, keep_index = pruner(patches, image_mask, task, task_mask)
    assert image_mask.gather(1, keep_index)[kept_mask].all()
    # Changing the missing camera's content changes neither the selection nor the votes.
    other = patches.clone()
    other[:, 16:32] = torch.randn(2, 16, D) * 5
    again = pruner(other, image_mask, task, task_mask)
    assert torch.equal(again[2], keep_index) and torch.equal(again[1], kept_mask)


def test_sample_without_valid_tokens_keeps_nothing() -> None:
    patches, image_mask, task, task_mask = _inputs(2, 16, 4, seed=13)
    image_mask[1] = False
    pruner = ImageTokenPruner(D, PrunerConfig(min_keep=3)).eval()
    kept, kept_mask, _ = pruner(patches, image_mask, task, task_mask)
    assert kept_mask[1].sum() == 0 and kept_mask[0].sum() >= 3
    assert torch.isfinite(kept).all()
    pruner.train()
    out, train_mask, _ = pruner(patches, image_mask, task, task_mask)
    assert not train_mask[1].any() and torch.isfinite(out).all()


# --- budgets ------------------------------------------------------------------------------------


def _expected_ranked(pruner: ImageTokenPruner, inputs, b: int, lo: int, hi: int, k: int):
    """Top-k in [lo, hi) by (votes desc, column max score desc, index asc), by Python sorting."""
    patches, image_mask, task, task_mask = inputs
    score = pruner.score(patches, image_mask, task, task_mask)[b]
    valid = image_mask[b]
    votes = [0] * patches.shape[1]
    for row in range(patches.shape[1]):
        if valid[row]:
            votes[int(score[row].argmax())] += 1
    col_best = score[valid].max(dim=0).values
    cands = [j for j in range(lo, hi) if valid[j]]
    cands.sort(key=lambda j: (-votes[j], -float(col_best[j]), j))
    return sorted(cands[:k])


def test_keep_tokens_pooled_ranks_by_votes_then_score() -> None:
    inputs = _inputs(3, 60, 8, seed=15)
    inputs[1][2, :50] = False  # only 10 valid: budget capped
    pruner = ImageTokenPruner(D, PrunerConfig(keep_tokens=20)).eval()
    kept, kept_mask, keep_index = pruner(*inputs)
    assert kept.shape[1] == 20  # static K = budget, no dependence on data
    assert kept_mask.sum(-1).tolist() == [20, 20, 10]
    for b in range(3):
        c = int(kept_mask[b].sum())
        assert keep_index[b, :c].tolist() == _expected_ranked(pruner, inputs, b, 0, 60, 20)
    # the budget exceeds the union here, so zero-vote tokens were ranked by score
    assert (pruner.last_stats.union_size[:2] < 20).all()


def test_keep_ratio_per_camera() -> None:
    inputs = _inputs(2, 3 * 20, 8, seed=16)
    cfg = PrunerConfig(keep_ratio=0.12, budget_scope="per_camera", num_cameras=3)
    pruner = ImageTokenPruner(D, cfg).eval()
    _, kept_mask, keep_index = pruner(*inputs)
    per_cam = math.ceil(0.12 * 20)  # 3
    for b in range(2):
        idx = keep_index[b][kept_mask[b]]
        for cam in range(3):
            in_cam = idx[(idx >= cam * 20) & (idx < (cam + 1) * 20)].tolist()
            assert in_cam == _expected_ranked(pruner, inputs, b, cam * 20, (cam + 1) * 20, per_cam)


def test_min_keep_prevents_collapse() -> None:
    # Identical task tokens and near-identical queries: every query picks the same patch.
    patches, image_mask, task, task_mask = _inputs(2, 48, 5, seed=17)
    task = task[:, :1].expand(-1, 5, -1).contiguous()
    patches = patches + 20 * task[:, :1]  # all patches dominated by one direction
    base = ImageTokenPruner(D).eval()
    _, base_mask, base_index = base(patches, image_mask, task, task_mask)
    assert (base.last_stats.union_size <= 2).all()
    assert (base.last_stats.top_vote_share > 0.5).all()
    guarded = ImageTokenPruner(D, PrunerConfig(min_keep=8)).eval()
    _, mask, index = guarded(patches, image_mask, task, task_mask)
    assert mask.sum(-1).tolist() == [8, 8]
    for b in range(2):  # the union is still kept, and topped up by rank
        union = set(base_index[b][base_mask[b]].tolist())
        assert union <= set(index[b][mask[b]].tolist())
        assert index[b][mask[b]].tolist() == _expected_ranked(
            guarded, (patches, image_mask, task, task_mask), b, 0, 48, 8
        )
    # per camera: at least 3 from each of the 3 cameras
    per_cam = ImageTokenPruner(
        D, PrunerConfig(min_keep=3, budget_scope="per_camera", num_cameras=3)
    ).eval()
    _, mask, index = per_cam(patches, image_mask, task, task_mask)
    for b in range(2):
        idx = index[b][mask[b]]
        assert all(((idx // 16) == cam).sum() >= 3 for cam in range(3))


def test_pad_to_multiple_rounds_kept_length() -> None:
    patches, image_mask, task, task_mask = _masked_batch()
    plain = ImageTokenPruner(D).eval()
    _, plain_mask, _ = plain(patches, image_mask, task, task_mask)
    rounded = ImageTokenPruner(D, PrunerConfig(pad_to_multiple=8)).eval()
    kept, mask, _index = rounded(patches, image_mask, task, task_mask)
    kmax = int(plain_mask.sum(-1).max())
    assert kept.shape[1] == min(-(-kmax // 8) * 8, 48)
    assert torch.equal(mask.sum(-1), plain_mask.sum(-1))
    capped = ImageTokenPruner(D, PrunerConfig(pad_to_multiple=36, min_keep=40)).eval()
    assert capped(patches, image_mask, task, task_mask)[0].shape[1] == 48  # capped at N


# --- noise, dtype, stats, errors ----------------------------------------------------------------


def test_eval_ignores_noise_and_train_noise_is_uniform_amplitude() -> None:
    inputs = _inputs(2, 32, 6, seed=18)
    pruner = ImageTokenPruner(D).eval()
    clean = pruner(*inputs)[2]
    pruner.set_noise_scale(5.0)
    assert torch.equal(pruner(*inputs)[2], clean)
    pruner.train()
    score = pruner.score(*inputs)
    torch.manual_seed(0)
    noisy_choice = pruner(*inputs)[2]
    torch.manual_seed(0)
    assert torch.equal(noisy_choice, (score + 5.0 * torch.rand_like(score)).argmax(-1))
    pruner.set_noise_scale(None)
    assert torch.equal(pruner(*inputs)[2], score.argmax(-1))
    with pytest.raises(ValueError, match="noise_scale"):
        pruner.set_noise_scale(-1.0)


def test_fp32_scores_for_bf16_inputs() -> None:
    patches, image_mask, task, task_mask = _inputs(1, 32, 6, seed=19, dtype=torch.bfloat16)
    default = ImageTokenPruner(D).score(patches, image_mask, task, task_mask)
    fp32 = ImageTokenPruner(D, PrunerConfig(fp32_scores=True)).score(
        patches, image_mask, task, task_mask
    )
    assert default.dtype == torch.bfloat16 and fp32.dtype == torch.float32
    # fp32 scoring is scoring the upcast inputs: no bf16 rounding anywhere after the inputs.
    upcast = lightvla_scores(patches.float(), task.float(), task_mask)
    torch.testing.assert_close(fp32, upcast, rtol=0, atol=0)
    torch.testing.assert_close(default.float(), upcast, rtol=0.05, atol=0.1)  # bf16: coarse
    assert not torch.equal(fp32, default.float())


def test_stats_are_tensors_and_summary_syncs() -> None:
    patches, image_mask, task, task_mask = _masked_batch()
    pruner = ImageTokenPruner(D).eval()
    _, kept_mask, _ = pruner(patches, image_mask, task, task_mask)
    stats = pruner.last_stats
    assert isinstance(stats.kept_count, torch.Tensor)
    assert torch.equal(stats.kept_count, kept_mask.sum(-1))
    assert torch.equal(stats.union_size, stats.kept_count)  # no budget: kept = union
    assert torch.equal(stats.num_valid, image_mask.sum(-1))
    assert ((stats.top_vote_share > 0) & (stats.top_vote_share <= 1)).all()
    summary = stats.summary()
    assert summary["kept_mean"] == pytest.approx(kept_mask.sum(-1).float().mean().item())


def test_config_and_input_validation_errors() -> None:
    with pytest.raises(ValueError, match="at most one"):
        PrunerConfig(keep_tokens=4, keep_ratio=0.5)
    with pytest.raises(ValueError, match="keep_ratio"):
        PrunerConfig(keep_ratio=1.5)
    with pytest.raises(ValueError, match="keep_tokens"):
        PrunerConfig(keep_tokens=0)
    with pytest.raises(ValueError, match="min_keep only applies"):
        PrunerConfig(keep_tokens=4, min_keep=2)
    with pytest.raises(ValueError, match="budget_scope"):
        PrunerConfig(budget_scope="camera")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pad_to_multiple"):
        PrunerConfig(pad_to_multiple=0)
    with pytest.raises(ValueError, match="num_cameras"):
        PrunerConfig(num_cameras=0)
    with pytest.raises(ValueError, match="min_keep"):
        PrunerConfig(min_keep=-1)
    patches, image_mask, task, task_mask = _inputs(2, 30, 4)
    pruner = ImageTokenPruner(D)
    with pytest.raises(ValueError, match="hidden_size"):
        ImageTokenPruner(D + 1)(patches, image_mask, task, task_mask)
    with pytest.raises(TypeError, match="image_mask must be a bool"):
        pruner(patches, image_mask.long(), task, task_mask)
    with pytest.raises(ValueError, match="task_mask must have shape"):
        pruner(patches, image_mask, task, task_mask[:, :2])
    with pytest.raises(ValueError, match="task_tokens must be"):
        pruner(patches, image_mask, task[:1], task_mask)
    with pytest.raises(ValueError, match="divisible by num_cameras=4"):
        ImageTokenPruner(D, PrunerConfig(budget_scope="per_camera", num_cameras=4))(
            patches, image_mask, task, task_mask
        )
    with pytest.raises(ValueError, match="too short"):
        TokenPruner(D, 30)(torch.randn(1, 31, D))


def test_token_pruner_batched_eval_pads_and_masks() -> None:
    patches, image_mask, task, task_mask = _masked_batch()
    cls_tok = torch.randn(4, 1, D)
    tokens = torch.cat([cls_tok, patches, task], dim=1)
    mask = torch.cat([torch.ones(4, 1, dtype=torch.bool), image_mask, task_mask], dim=1)
    ids = torch.arange(tokens.shape[1]).expand(4, -1)
    pruner = TokenPruner(D, 48).eval()
    out, out_ids, out_mask = pruner(tokens, ids, mask)
    direct = ImageTokenPruner(D).eval()(patches, image_mask, task, task_mask)
    k = direct[0].shape[1]
    assert out.shape == (4, 1 + k + 10, D)
    assert torch.equal(out[:, 1 : 1 + k], direct[0])
    assert torch.equal(out_mask[:, 1 : 1 + k], direct[1])
    assert torch.equal(out_ids[:, 1 : 1 + k], direct[2] + 1)  # patch ids start after cls
    assert torch.equal(out_ids[:, 1 + k :], ids[:, 49:]) and torch.equal(out[:, :1], cls_tok)
    assert torch.equal(out_mask[:, 1 + k :], task_mask)
