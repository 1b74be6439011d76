"""Pins the attention backends against an independent float64 reference (explicit K/V head repeat,
additive mask) on valid rows, GQA/MQA, forward-mode AD, the fa2 fallback warning and validation."""

import logging

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from vla_core import ATTENTION_IMPLEMENTATIONS, attend, flex_attention_available
from vla_core import attention as attention_module
from vla_core.masks import BlockCausalMask


def _reference(q, k, v, mask, scale):
    groups = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(groups, dim=1)
    v = v.double().repeat_interleave(groups, dim=1)
    logits = q.double() @ k.transpose(-1, -2) * scale
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None], float("-inf"))
    return torch.softmax(logits, -1) @ v


def _inputs(heads=4, kv_heads=2, q_len=7, k_len=11, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, q_len, dim, generator=gen)
    k = torch.randn(2, kv_heads, k_len, dim, generator=gen)
    v = torch.randn(2, kv_heads, k_len, dim, generator=gen)
    # Prefix-LM layout on the keys, queries = last q_len keys, sample 1 right-padded by 2.
    ar = torch.zeros(2, k_len, dtype=torch.bool)
    ar[:, k_len - q_len] = True
    ar[:, k_len - q_len + 1] = True
    pad = torch.ones(2, k_len, dtype=torch.bool)
    pad[1, -2:] = False
    mask = BlockCausalMask.from_ar(pad, ar, num_queries=q_len)
    return q, k, v, mask


@pytest.mark.parametrize("implementation", ATTENTION_IMPLEMENTATIONS)
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (8, 1), (4, 4)])
def test_backends_match_reference_on_valid_rows(implementation, heads, kv_heads) -> None:
    if implementation == "flex" and not flex_attention_available():
        pytest.skip("flex_attention not available in this torch build")
    q, k, v, spec = _inputs(heads, kv_heads)
    dense = spec.dense()
    block_mask = spec.flex_block_mask() if implementation == "flex" else None
    out = attend(q, k, v, dense, scale=0.25, implementation=implementation, block_mask=block_mask)
    ref = _reference(q, k, v, dense, 0.25)
    valid = spec.q_valid  # [B, Lq]
    err = (out.double() - ref).abs().permute(0, 2, 1, 3)[valid].max().item()
    assert out.shape == q.shape
    assert err <= 1e-5, err


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex"])
def test_full_attention_without_mask(implementation) -> None:
    if implementation == "flex" and not flex_attention_available():
        pytest.skip("flex_attention not available")
    q, k, v, _ = _inputs()
    out = attend(q, k, v, None, scale=0.3, implementation=implementation)
    assert (out.double() - _reference(q, k, v, None, 0.3)).abs().max() <= 1e-5


def test_flex_dense_lookup_block_mask_matches_id_block_mask() -> None:
    if not flex_attention_available():
        pytest.skip("flex_attention not available")
    q, k, v, spec = _inputs()
    from_ids = attend(
        q, k, v, None, scale=0.25, implementation="flex", block_mask=spec.flex_block_mask()
    )
    from_dense = attend(q, k, v, spec.dense(), scale=0.25, implementation="flex")
    valid = spec.q_valid
    assert torch.equal(from_ids.permute(0, 2, 1, 3)[valid], from_dense.permute(0, 2, 1, 3)[valid])


def test_eager_fully_masked_rows_are_finite() -> None:
    q, k, v, spec = _inputs()
    out = attend(q, k, v, spec.dense(), scale=0.25, implementation="eager")
    assert torch.isfinite(out).all()


def test_fa2_falls_back_to_sdpa_with_one_warning(caplog) -> None:
    attention_module._warned.clear()
    q, k, v, spec = _inputs()
    with caplog.at_level(logging.WARNING, logger="vla_core.attention"):
        first = attend(q, k, v, spec.dense(), scale=0.25, implementation="fa2")
        attend(q, k, v, spec.dense(), scale=0.25, implementation="fa2")
    warnings = [r for r in caplog.records if "falling back to 'sdpa'" in r.getMessage()]
    assert len(warnings) == 1
    assert torch.equal(first, attend(q, k, v, spec.dense(), scale=0.25, implementation="sdpa"))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_forward_mode_ad(implementation) -> None:
    """eager / sdpa(MATH) support torch.func.jvp (vla-imf needs it); tangent checked against a
    float64 central finite difference."""
    q, k, v, spec = _inputs()
    mask = spec.dense()
    gen = torch.Generator().manual_seed(3)
    tq, tk, tv = (torch.randn(x.shape, generator=gen) for x in (q, k, v))

    def fn(q_, k_, v_):
        return attend(q_, k_, v_, mask, scale=0.25, implementation=implementation)

    with sdpa_kernel(SDPBackend.MATH):
        _, tangent = torch.func.jvp(fn, (q, k, v), (tq, tk, tv))
    eps = 1e-4
    plus = _reference(
        q.double() + eps * tq, k.double() + eps * tk, v.double() + eps * tv, mask, 0.25
    )
    minus = _reference(
        q.double() - eps * tq, k.double() - eps * tk, v.double() - eps * tv, mask, 0.25
    )
    finite_difference = (plus - minus) / (2 * eps)
    valid = spec.q_valid
    err = (tangent.double() - finite_difference).abs().permute(0, 2, 1, 3)[valid].max().item()
    assert err <= 1e-4, err


def test_validation_errors() -> None:
    q, k, v, spec = _inputs()
    with pytest.raises(ValueError, match="attention_implementation must be one of"):
        attend(q, k, v, None, scale=1.0, implementation="xformers")
    with pytest.raises(ValueError, match="mask must be bool"):
        attend(q, k, v, spec.dense().float(), scale=1.0)
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of kv heads \(3\)"):
        attend(q, torch.randn(2, 3, 11, 16), torch.randn(2, 3, 11, 16), None, scale=1.0)
