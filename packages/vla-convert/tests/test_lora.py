"""LoRA merge vs openpi's RUNTIME LoRA, module by module, in fp32 (tolerance 1e-5).

Reference: JAX einsums written here from openpi `lora.py` (Einsum: `einsum(eqn, x, W) +
s * einsum(eqn_b, einsum(eqn_a, x, A), B)` with the literal openpi equations; FeedForward `_dot`:
`x @ W + (x @ A) @ B`, unscaled). Candidate: torch `F.linear` with the tensors the converter's plan
produces. Ranks > 1, N > 1 heads, K in {2, N}, alpha != rank, rsLoRA on and off. Each kind also
checks that the two known wrong merges (per-head attn_vec, alpha/rank-scaled FFN) are rejected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vla_convert._testing import random_openpi_params, tiny_dims
from vla_convert.dims import LLM
from vla_convert.lora import LoraSpec, delta_equation, lora_equations
from vla_convert.mapping import LANGUAGE, build_plan, map_params

jax.config.update("jax_default_matmul_precision", "highest")

RANK, ALPHA = 4, 8.0
TOL = 1e-5
# openpi's equations and the LoRA equations `Einsum._make_lora_eqns` derives from them, written out.
OPENPI = {
    "q": ("BTD,NDH->BTNH", "BTD,NDL->BTNL", "BTNL,NLH->BTNH"),
    "kv": ("BSD,2KDH->2BSKH", "BSD,2KDL->2BSKL", "2BSKL,2KLH->2BSKH"),
    "qkv": ("BSD,3KDH->3BSKH", "BSD,3KDL->3BSKL", "3BSKL,3KLH->3BSKH"),
    "attn_vec": ("BTNH,NHD->BTD", "BTNH,NHL->BTL", "BTL,NLD->BTD"),
}


def test_lora_equations_match_openpi() -> None:
    for eqn, eqn_a, eqn_b in OPENPI.values():
        assert lora_equations(eqn) == (eqn_a, eqn_b)


def test_delta_equation_sums_lora_b_over_heads_only_for_attn_vec() -> None:
    assert delta_equation("BTD,NDH->BTNH") == "NDL,NLH->NDH"  # per head
    assert delta_equation("BTNH,NHD->BTD") == "NHL,aLD->NHD"  # B's N summed on its own
    kv = delta_equation("BSD,2KDH->2BSKH")
    assert kv.count(",") == 1 and kv.split("->")[1][1:] == "KDH" and "2" not in kv


def _setup(pi05: bool, fused: bool, rslora: bool, seed: int = 0):
    dims = tiny_dims(pi05=pi05, lora_rank=RANK, fused_qkv=fused)
    params = random_openpi_params(dims, seed=seed)
    for key in params:
        if "lora_" in key:  # larger adapters than the generator's default: the deltas dominate
            params[key] = params[key] * 4
    spec = LoraSpec(RANK, ALPHA, rslora)
    tensors = map_params(params, build_plan(dims, (spec, spec)))
    return dims, params, spec, tensors


def _online(eqns: tuple[str, str, str], x, w, a, b, scale: float) -> np.ndarray:
    eqn, eqn_a, eqn_b = eqns
    base = jnp.einsum(eqn, x, w)
    return np.asarray(base + jnp.einsum(eqn_b, jnp.einsum(eqn_a, x, a), b) * scale)


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("kind", ["q", "kv", "qkv", "attn_vec"])
def test_einsum_lora_merge_matches_online_jax(kind: str, rslora: bool) -> None:
    dims, params, spec, tensors = _setup(pi05=False, fused=kind == "qkv", rslora=rslora)
    assert spec.scale == (ALPHA / np.sqrt(RANK) if rslora else ALPHA / RANK) != 1.0
    rng = np.random.default_rng(1)
    B, T = 2, 5
    for expert, e in enumerate(dims.experts):
        sfx = "" if expert == 0 else f"_{expert}"
        name = f"{LLM}/layers/attn/{kind}_einsum{sfx}"
        N, K, H, D = e.num_heads, e.num_kv_heads, e.head_dim, e.width
        for i in range(e.depth):
            w, a, b = (params[f"{name}/{p}"][i] for p in ("w", "lora_a", "lora_b"))
            prefix = LANGUAGE[expert] + f"layers.{i}.self_attn."
            if kind == "attn_vec":
                x = rng.standard_normal((B, T, N, H)).astype(np.float32)
                ref = _online(OPENPI[kind], x, w, a, b, spec.scale)
                got = F.linear(
                    torch.from_numpy(x).reshape(B, T, N * H),
                    tensors[prefix + "o_proj.weight"],
                )
                assert np.abs(got.numpy() - ref).max() <= TOL
                # the naive per-head merge is measurably wrong on the same inputs
                naive = w + spec.scale * np.einsum("nhr,nrd->nhd", a, b)
                wrong = np.einsum("btnh,nhd->btd", x, naive)
                assert np.abs(wrong - ref).max() > 1e-2
                continue
            x = rng.standard_normal((B, T, D)).astype(np.float32)
            ref = _online(OPENPI[kind], x, w, a, b, spec.scale)
            xt = torch.from_numpy(x)
            projs = {
                "q": ["q_proj"],
                "kv": ["k_proj", "v_proj"],
                "qkv": ["q_proj", "k_proj", "v_proj"],
            }[kind]
            for j, proj in enumerate(projs):
                heads = N if proj == "q_proj" else K
                got = F.linear(xt, tensors[prefix + f"{proj}.weight"])
                want = ref if kind == "q" else ref[j]
                assert np.abs(got.view(B, T, heads, H).numpy() - want).max() <= TOL


def _dot(x, w, a, b, scale: float = 1.0):
    """openpi FeedForward._dot; the runtime uses scale = 1 (the `scale` argument is for the
    deliberately wrong variant)."""
    return jnp.dot(x, w) + scale * jnp.dot(jnp.dot(x, a), b)


def _ffn(x, wg, ag, bg, wl, al, bl, scale: float) -> np.ndarray:
    h = jax.nn.gelu(_dot(x, wg[0], ag[0], bg[0], scale), approximate=True)
    h = h * _dot(x, wg[1], ag[1], bg[1], scale)
    return np.asarray(_dot(h, wl, al, bl, scale))


@pytest.mark.parametrize("rslora", [False, True])
def test_feedforward_lora_is_unscaled_and_matches_online_jax(rslora: bool) -> None:
    dims, params, spec, tensors = _setup(pi05=True, fused=False, rslora=rslora)
    rng = np.random.default_rng(2)
    for expert, e in enumerate(dims.experts):
        mlp = f"{LLM}/layers/mlp{'' if expert == 0 else f'_{expert}'}"
        for i in range(e.depth):
            prefix = LANGUAGE[expert] + f"layers.{i}.mlp."
            wg, ag, bg = (params[f"{mlp}/gating_einsum{s}"][i] for s in ("", "_lora_a", "_lora_b"))
            wl, al, bl = (params[f"{mlp}/linear{s}"][i] for s in ("", "_lora_a", "_lora_b"))
            x = rng.standard_normal((2, 5, e.width)).astype(np.float32)

            xt = torch.from_numpy(x)
            gate = F.linear(xt, tensors[prefix + "gate_proj.weight"])
            up = F.linear(xt, tensors[prefix + "up_proj.weight"])
            got = F.linear(
                F.gelu(gate, approximate="tanh") * up,
                tensors[prefix + "down_proj.weight"],
            )
            ref = _ffn(x, wg, ag, bg, wl, al, bl, 1.0)
            assert np.abs(got.numpy() - ref).max() <= TOL
            assert np.abs(gate.numpy() - np.asarray(_dot(x, wg[0], ag[0], bg[0]))).max() <= TOL
            # scaling the FFN delta by alpha/rank (as for attention) would be wrong
            assert np.abs(_ffn(x, wg, ag, bg, wl, al, bl, spec.scale) - ref).max() > 1e-2


def test_lora_spec_validation() -> None:
    with pytest.raises(ValueError, match="rank"):
        LoraSpec(0, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        LoraSpec(4, float("nan"))
