"""vla layout: converted tiny checkpoints load strictly into vla-core and run `sample_actions`;
one joint decoder layer (both streams, LoRA applied ONLINE) computed in JAX from openpi's math
matches vla-core's `JointDecoderLayer` loaded from the converted file (fp32, tolerance 1e-5)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vla_convert._testing import random_openpi_params, tiny_dims, write_openpi_checkpoint
from vla_convert.convert import convert_openpi
from vla_convert.dims import LLM
from vla_convert.lora import LoraSpec
from vla_core._testing import random_observation
from vla_core.layers import rope_cos_sin
from vla_core.state_dict import load_config, load_pretrained

jax.config.update("jax_default_matmul_precision", "highest")

TINY = {"num_cameras": 2, "max_token_len": 12}
SPEC = LoraSpec(4, 8.0)  # scale 2: attention deltas scaled, FFN deltas not


def _convert(tmp_path: Path, pi05: bool, lora: bool, value_suffix: bool = False):
    dims = tiny_dims(pi05=pi05, lora_rank=4 if lora else None)
    params = random_openpi_params(dims, seed=11)
    for key in params:
        if "lora_" in key:
            params[key] = params[key] * 4  # adapters large enough that a wrong merge shows
    step = write_openpi_checkpoint(tmp_path / "ckpt", params, value_suffix=value_suffix)
    convert_openpi(
        step,
        tmp_path / "out",
        lora=SPEC if lora else None,
        action_horizon=5,
        config_overrides=TINY,
    )
    return dims, params, tmp_path / "out"


@pytest.mark.parametrize(
    ("pi05", "lora", "value_suffix"),
    [(False, False, True), (False, True, False), (True, True, True)],
)
def test_converted_model_loads_strictly_and_samples(
    tmp_path: Path, pi05: bool, lora: bool, value_suffix: bool
) -> None:
    _, _, out = _convert(tmp_path, pi05, lora, value_suffix)
    config = load_config(out)
    assert config.variant == ("pi05" if pi05 else "pi0")
    assert (config.backbone.num_kv_heads, config.expert.width, config.action_dim) == (2, 32, 6)
    model = load_pretrained(out)  # strict: every key filled, none unexpected, shapes equal
    observation = random_observation(model.config, batch_size=2, seed=0)
    noise = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(0))
    actions = model.sample_actions(observation, noise=noise, num_steps=3)
    assert actions.shape == (2, 5, 6)
    assert torch.isfinite(actions).all()
    assert (actions - noise).abs().max() > 1e-3  # the weights do act on the noise


# ---- one joint layer, JAX from openpi's math ----------------------------------------------------


def _rms(x, scale=None, dense=None, cond=None):
    """openpi RMSNorm / adaRMS: x̂·(1+scale), or x̂·(1+s)+shift with gate from Dense(cond)."""
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    normed = x * jax.lax.rsqrt(var + 1e-6)
    if dense is None:
        return normed * (1 + scale), None
    mod = cond @ dense[0] + dense[1]
    s, shift, gate = jnp.split(mod[:, None, :], 3, axis=-1)
    return normed * (1 + s) + shift, gate


def _einsum(eqn, eqn_a, eqn_b, x, p, name, scale):
    out = jnp.einsum(eqn, x, p[f"{name}/w"])
    if f"{name}/lora_a" in p:
        out = (
            out
            + jnp.einsum(eqn_b, jnp.einsum(eqn_a, x, p[f"{name}/lora_a"]), p[f"{name}/lora_b"])
            * scale
        )
    return out


def _dot(x, p, key):
    out = jnp.dot(x, p[key])
    if f"{key}_lora_a" in p:
        out = out + jnp.dot(jnp.dot(x, p[f"{key}_lora_a"]), p[f"{key}_lora_b"])  # unscaled
    return out


def _rope(x, positions):  # x [B, T, N, H]
    half = x.shape[-1] // 2
    timescale = 10_000.0 ** (2 * jnp.arange(half) / x.shape[-1])
    rad = positions[..., None, None] / timescale
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate(
        [x1 * jnp.cos(rad) - x2 * jnp.sin(rad), x2 * jnp.cos(rad) + x1 * jnp.sin(rad)], -1
    )


def _jax_joint_layer(params, dims, i, xs, cond, mask, positions, scale):
    """openpi gemma.py Block over both experts: joint attention, gated residuals, LoRA online."""
    prefix = f"{LLM}/layers/"
    p_i = {k[len(prefix) :]: v[i] for k, v in params.items() if k.startswith(prefix)}
    layer = [("", p_i), ("_1", p_i)]
    qs, ks, vs, gates, normed_in = [], [], [], [], []
    for (sfx, p), x in zip(layer, xs):
        norm = f"pre_attention_norm{sfx}"
        dense = (
            (p[f"{norm}/Dense_0/kernel"], p[f"{norm}/Dense_0/bias"])
            if f"{norm}/Dense_0/kernel" in p
            else None
        )
        h, gate = _rms(x, p.get(f"{norm}/scale"), dense, cond)
        gates.append(gate)
        qs.append(
            _einsum(
                "BTD,NDH->BTNH",
                "BTD,NDL->BTNL",
                "BTNL,NLH->BTNH",
                h,
                p,
                f"attn/q_einsum{sfx}",
                scale,
            )
        )
        kv = _einsum(
            "BSD,2KDH->2BSKH",
            "BSD,2KDL->2BSKL",
            "2BSKL,2KLH->2BSKH",
            h,
            p,
            f"attn/kv_einsum{sfx}",
            scale,
        )
        ks.append(kv[0])
        vs.append(kv[1])
        normed_in.append(h)
    q = _rope(jnp.concatenate(qs, 1), positions) * dims.paligemma.head_dim**-0.5
    k = _rope(jnp.concatenate(ks, 1), positions)
    v = jnp.concatenate(vs, 1)
    B, T, N, H = q.shape
    K = k.shape[2]
    q = q.reshape(B, T, K, N // K, H)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k)
    logits = jnp.where(mask[:, None, None], logits, -2.3819763e38)
    probs = jax.nn.softmax(logits, axis=-1)
    enc = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(B, T, N, H)
    outs, start = [], 0
    for ((sfx, p), x), gate in zip(zip(layer, xs), gates):
        rows = enc[:, start : start + x.shape[1]]
        start += x.shape[1]
        attn = _einsum(
            "BTNH,NHD->BTD",
            "BTNH,NHL->BTL",
            "BTL,NLD->BTD",
            rows,
            p,
            f"attn/attn_vec_einsum{sfx}",
            scale,
        )
        x = x + (attn if gate is None else attn * gate)
        norm = f"pre_ffw_norm{sfx}"
        dense = (
            (p[f"{norm}/Dense_0/kernel"], p[f"{norm}/Dense_0/bias"])
            if f"{norm}/Dense_0/kernel" in p
            else None
        )
        h, gate = _rms(x, p.get(f"{norm}/scale"), dense, cond)
        w_gating = p[f"mlp{sfx}/gating_einsum"]
        gate_in, up_in = jnp.dot(h, w_gating[0]), jnp.dot(h, w_gating[1])
        if f"mlp{sfx}/gating_einsum_lora_a" in p:
            a, b = p[f"mlp{sfx}/gating_einsum_lora_a"], p[f"mlp{sfx}/gating_einsum_lora_b"]
            gate_in = gate_in + jnp.dot(jnp.dot(h, a[0]), b[0])
            up_in = up_in + jnp.dot(jnp.dot(h, a[1]), b[1])
        ff = _dot(jax.nn.gelu(gate_in, approximate=True) * up_in, p, f"mlp{sfx}/linear")
        x = x + (ff if gate is None else ff * gate)
        outs.append(np.asarray(x))
    return outs


@pytest.mark.parametrize("pi05", [False, True])
def test_joint_layer_matches_jax_with_online_lora(tmp_path: Path, pi05: bool) -> None:
    dims, params, out = _convert(tmp_path, pi05, lora=True)
    model = load_pretrained(out)
    rng = np.random.default_rng(0)
    B, Lp, Ls = 2, 6, 4
    x0 = rng.standard_normal((B, Lp, dims.paligemma.width)).astype(np.float32)
    x1 = rng.standard_normal((B, Ls, dims.expert.width)).astype(np.float32)
    cond = rng.standard_normal((B, dims.expert.width)).astype(np.float32) if pi05 else None
    # prefix bidirectional, suffix block-causal after it (cumsum rule); last prefix token padding
    ar = np.array([0] * Lp + [1] + [0] * (Ls - 1))
    valid = np.ones((B, Lp + Ls), bool)
    valid[1, Lp - 1] = False
    c = np.cumsum(ar)
    mask = (c[None, :] <= c[:, None])[None] & valid[:, None, :] & valid[:, :, None]
    positions = (np.cumsum(valid, axis=1) - 1).astype(np.float32)
    for i in range(dims.paligemma.depth):
        ref0, ref1 = _jax_joint_layer(
            {k: jnp.asarray(v) for k, v in params.items()},
            dims,
            i,
            (x0, x1),
            None if cond is None else jnp.asarray(cond),
            jnp.asarray(mask),
            jnp.asarray(positions),
            SPEC.scale,
        )
        layer = model.engine.layers[i]
        with torch.no_grad():
            out0, out1, _, _ = layer(
                torch.from_numpy(x0),
                torch.from_numpy(x1),
                rope_cos_sin(torch.from_numpy(positions), dims.paligemma.head_dim),
                torch.from_numpy(mask),
                expert_cond=None if cond is None else torch.from_numpy(cond),
            )
        rows = valid[:, :, None]  # compare only valid (non-padding) rows
        err0 = np.abs(np.where(rows[:, :Lp], out0.numpy() - ref0, 0)).max()
        err1 = np.abs(out1.numpy() - ref1).max()
        assert err0 <= 1e-5 and err1 <= 1e-5, (i, err0, err1)
