"""Check a written conversion by running each converted layer kind both ways on random inputs.

Reference: JAX on the ORIGINAL checkpoint leaves, with LoRA applied online exactly as openpi's
`lora.py` does (two einsums, scaled; FeedForward unscaled). Candidate: torch `F.linear` /
`conv2d` / copies on the tensors read back from the written safetensors file. Layers checked: the
first and the last of every stack. Returns the max |Δ| per kind and raises `VerificationError`
when one exceeds the tolerance of the output dtype (relative to the reference's magnitude).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla_convert.checkpoint import OpenpiCheckpoint
from vla_convert.dims import ENC, IMG, LLM, OpenpiDims, expert_suffix
from vla_convert.errors import VerificationError
from vla_convert.lora import (
    ATTN_VEC_EINSUM,
    KV_EINSUM,
    Q_EINSUM,
    QKV_EINSUM,
    LoraSpec,
    lora_equations,
)
from vla_convert.mapping import LANGUAGE, PROJECTOR, VISION

# max |Δ| / max(1, max |ref|) allowed, per stored dtype
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}


def _jax_einsum_lora(
    eqn: str, x: Any, w: np.ndarray, a: np.ndarray | None, b: np.ndarray | None, scale: float
) -> np.ndarray:
    import jax.numpy as jnp

    out = jnp.einsum(eqn, x, jnp.asarray(w, jnp.float32))
    if a is not None and b is not None:
        eqn_a, eqn_b = lora_equations(eqn)
        lora = jnp.einsum(eqn_a, x, jnp.asarray(a, jnp.float32))
        out = out + jnp.einsum(eqn_b, lora, jnp.asarray(b, jnp.float32)) * scale
    return np.asarray(out)


def _jax_dot_lora(x: Any, w: np.ndarray, a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray:
    import jax.numpy as jnp

    out = jnp.dot(x, jnp.asarray(w, jnp.float32))
    if a is not None and b is not None:
        out = out + jnp.dot(jnp.dot(x, jnp.asarray(a, jnp.float32)), jnp.asarray(b, jnp.float32))
    return np.asarray(out)


def verify_conversion(
    ckpt: OpenpiCheckpoint,
    dims: OpenpiDims,
    lora: tuple[LoraSpec | None, LoraSpec | None],
    weights: Path,
    renamed: dict[str, str],
    dtype: str,
    seed: int = 0,
) -> dict[str, float]:
    """Max |Δ| per converted layer kind between JAX (online LoRA) and the written tensors."""
    from safetensors import safe_open

    rng = np.random.default_rng(seed)
    diffs: dict[str, float] = {}
    worst_rel: dict[str, float] = {}
    cache: dict[str, np.ndarray] = {}

    def leaves(*keys: str) -> list[np.ndarray]:
        """Source leaves; only the most recent group stays cached (bounded memory)."""
        if any(key not in cache for key in keys):
            cache.clear()
            for key in keys:
                cache[key] = ckpt.read(key)
        return [cache[key] for key in keys]

    with safe_open(str(weights), framework="pt") as f:

        def tensor(name: str) -> torch.Tensor:
            return f.get_tensor(renamed[name]).float()

        def record(kind: str, ref: np.ndarray, out: torch.Tensor) -> None:
            ref = np.asarray(ref, np.float32)
            err = float(np.max(np.abs(ref - out.detach().numpy()))) if ref.size else 0.0
            diffs[kind] = max(diffs.get(kind, 0.0), err)
            rel = err / max(1.0, float(np.max(np.abs(ref))))
            worst_rel[kind] = max(worst_rel.get(kind, 0.0), rel)

        def x(*shape: int) -> np.ndarray:
            return rng.standard_normal(shape).astype(np.float32)

        for expert, (e, spec) in enumerate(zip(dims.experts, lora)):
            _verify_gemma(expert, e, spec, dims, leaves, tensor, record, x)
        _verify_vision(dims, leaves, tensor, record, x)
        _verify_dense_and_copies(dims, leaves, tensor, record, x)
    tol = TOLERANCE[dtype]
    bad = {k: v for k, v in worst_rel.items() if v > tol}
    if bad:
        raise VerificationError(
            f"converted modules differ from the JAX reference beyond {tol} (relative): "
            + ", ".join(f"{k}: max |Δ| {diffs[k]:.3g}" for k in sorted(bad))
        )
    return diffs


def _sample_layers(depth: int) -> list[int]:
    return sorted({0, depth - 1})


def _verify_gemma(expert, e, spec, dims, leaves, tensor, record, x) -> None:  # type: ignore[no-untyped-def]
    import jax.numpy as jnp

    sfx = expert_suffix(expert)
    attn, mlp = f"{LLM}/layers/attn", f"{LLM}/layers/mlp{sfx}"
    layer = LANGUAGE[expert] + "layers.{i}."
    B, T, N, K, H, D = 2, 3, e.num_heads, e.num_kv_heads, e.head_dim, e.width
    tag = "paligemma" if expert == 0 else "expert"

    def einsum_ref(name: str, eqn: str, inputs: np.ndarray, i: int) -> np.ndarray:
        """openpi Einsum on layer i with its LoRA applied online."""
        if spec is None:
            (w,) = leaves(f"{name}/w")
            return _jax_einsum_lora(eqn, jnp.asarray(inputs), w[i], None, None, 0.0)
        w, a, b = leaves(f"{name}/w", f"{name}/lora_a", f"{name}/lora_b")
        return _jax_einsum_lora(eqn, jnp.asarray(inputs), w[i], a[i], b[i], spec.scale)

    for i in _sample_layers(e.depth):
        xd = x(B, T, D)
        xt = torch.from_numpy(xd)
        L = layer.format(i=i)
        if e.fused_qkv:
            ref = einsum_ref(f"{attn}/qkv_einsum{sfx}", QKV_EINSUM, xd, i)
            for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out = F.linear(xt, tensor(L + f"self_attn.{proj}.weight")).view(B, T, N, H)
                record(f"{tag}.{proj}", ref[j], out)
        else:
            ref = einsum_ref(f"{attn}/q_einsum{sfx}", Q_EINSUM, xd, i)
            record(
                f"{tag}.q_proj",
                ref,
                F.linear(xt, tensor(L + "self_attn.q_proj.weight")).view(B, T, N, H),
            )
            ref = einsum_ref(f"{attn}/kv_einsum{sfx}", KV_EINSUM, xd, i)
            for j, proj in enumerate(("k_proj", "v_proj")):
                out = F.linear(xt, tensor(L + f"self_attn.{proj}.weight")).view(B, T, K, H)
                record(f"{tag}.{proj}", ref[j], out)
        xh = x(B, T, N, H)
        ref = einsum_ref(f"{attn}/attn_vec_einsum{sfx}", ATTN_VEC_EINSUM, xh, i)
        out = F.linear(
            torch.from_numpy(xh).reshape(B, T, N * H), tensor(L + "self_attn.o_proj.weight")
        )
        record(f"{tag}.o_proj", ref, out)

        ffn_lora = e.ffn_lora_rank is not None
        keys = [f"{mlp}/gating_einsum"] + (
            [f"{mlp}/gating_einsum_lora_a", f"{mlp}/gating_einsum_lora_b"] if ffn_lora else []
        )
        g = leaves(*keys)
        for c, proj in enumerate(("gate_proj", "up_proj")):
            lo = (g[1][i, c], g[2][i, c]) if ffn_lora else (None, None)
            ref = _jax_dot_lora(jnp.asarray(xd), g[0][i, c], *lo)
            record(f"{tag}.{proj}", ref, F.linear(xt, tensor(L + f"mlp.{proj}.weight")))
        xf = x(B, T, e.mlp_dim)
        keys = [f"{mlp}/linear"] + (
            [f"{mlp}/linear_lora_a", f"{mlp}/linear_lora_b"] if ffn_lora else []
        )
        lin = leaves(*keys)
        lo = (lin[1][i], lin[2][i]) if ffn_lora else (None, None)
        ref = _jax_dot_lora(jnp.asarray(xf), lin[0][i], *lo)
        record(
            f"{tag}.down_proj",
            ref,
            F.linear(torch.from_numpy(xf), tensor(L + "mlp.down_proj.weight")),
        )

        for jax_norm, torch_norm in (
            ("pre_attention_norm", "input_layernorm"),
            ("pre_ffw_norm", "post_attention_layernorm"),
        ):
            src = f"{LLM}/layers/{jax_norm}{sfx}"
            if e.adarms_cond_dim is None:
                record(
                    f"{tag}.norm_scale",
                    leaves(f"{src}/scale")[0][i],
                    tensor(L + f"{torch_norm}.weight"),
                )
            else:
                kernel, bias = leaves(f"{src}/Dense_0/kernel", f"{src}/Dense_0/bias")
                xc = x(B, e.adarms_cond_dim)
                ref = np.asarray(
                    jnp.dot(jnp.asarray(xc), jnp.asarray(kernel[i], jnp.float32)) + bias[i]
                )
                out = F.linear(
                    torch.from_numpy(xc),
                    tensor(L + f"{torch_norm}.dense.weight"),
                    tensor(L + f"{torch_norm}.dense.bias"),
                )
                record(f"{tag}.adarms_dense", ref, out)


def _verify_vision(dims, leaves, tensor, record, x) -> None:  # type: ignore[no-untyped-def]
    import jax
    import jax.numpy as jnp

    v = dims.vision
    kernel, bias = leaves(f"{IMG}/embedding/kernel", f"{IMG}/embedding/bias")
    side = 2 * v.patch_size
    img = x(2, side, side, 3)  # NHWC
    conv = jax.lax.conv_general_dilated(
        jnp.asarray(img),
        jnp.asarray(kernel, jnp.float32),
        (v.patch_size, v.patch_size),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ) + jnp.asarray(bias, jnp.float32)
    out = F.conv2d(
        torch.from_numpy(img).permute(0, 3, 1, 2),
        tensor(f"{VISION}embeddings.patch_embedding.weight"),
        tensor(f"{VISION}embeddings.patch_embedding.bias"),
        stride=v.patch_size,
    ).permute(0, 2, 3, 1)
    record("vision.patch_embedding", np.asarray(conv), out)
    pos = leaves(f"{IMG}/pos_embedding")[0]
    record(
        "vision.position_embedding", pos[0], tensor(f"{VISION}embeddings.position_embedding.weight")
    )
    mha = f"{ENC}/MultiHeadDotProductAttention_0"
    B, T = 2, 3
    for i in _sample_layers(v.depth):
        L = f"{VISION}encoder.layers.{i}."
        xd = x(B, T, v.width)
        for jax_p, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            k, b = leaves(f"{mha}/{jax_p}/kernel", f"{mha}/{jax_p}/bias")
            ref_q = np.asarray(
                jnp.einsum("btd,dnh->btnh", jnp.asarray(xd), jnp.asarray(k[i], jnp.float32)) + b[i]
            )
            out = F.linear(
                torch.from_numpy(xd),
                tensor(L + f"self_attn.{proj}.weight"),
                tensor(L + f"self_attn.{proj}.bias"),
            )
            record(f"vision.{proj}", ref_q, out.view(B, T, v.num_heads, v.head_dim))
        k, b = leaves(f"{mha}/out/kernel", f"{mha}/out/bias")
        xh = x(B, T, v.num_heads, v.head_dim)
        ref = np.asarray(
            jnp.einsum("btnh,nhd->btd", jnp.asarray(xh), jnp.asarray(k[i], jnp.float32)) + b[i]
        )
        out = F.linear(
            torch.from_numpy(xh).reshape(B, T, -1),
            tensor(L + "self_attn.out_proj.weight"),
            tensor(L + "self_attn.out_proj.bias"),
        )
        record("vision.out_proj", ref, out)
        for dense, fc, fan_in in (("Dense_0", "fc1", v.width), ("Dense_1", "fc2", v.mlp_dim)):
            k, b = leaves(f"{ENC}/MlpBlock_0/{dense}/kernel", f"{ENC}/MlpBlock_0/{dense}/bias")
            xi = x(B, T, fan_in)
            ref = np.asarray(jnp.dot(jnp.asarray(xi), jnp.asarray(k[i], jnp.float32)) + b[i])
            out = F.linear(
                torch.from_numpy(xi), tensor(L + f"mlp.{fc}.weight"), tensor(L + f"mlp.{fc}.bias")
            )
            record(f"vision.mlp.{fc}", ref, out)
        for ln, tln in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
            s, b = leaves(f"{ENC}/{ln}/scale", f"{ENC}/{ln}/bias")
            record("vision.layer_norm", s[i], tensor(L + f"{tln}.weight"))
            record("vision.layer_norm", b[i], tensor(L + f"{tln}.bias"))


def _verify_dense_and_copies(dims, leaves, tensor, record, x) -> None:  # type: ignore[no-untyped-def]
    import jax.numpy as jnp

    def dense(src: str, dst: str, kind: str) -> None:
        k, b = leaves(f"{src}/kernel", f"{src}/bias")
        xi = x(2, 3, k.shape[0])
        ref = np.asarray(jnp.dot(jnp.asarray(xi), jnp.asarray(k, jnp.float32)) + b)
        record(
            kind,
            ref,
            F.linear(torch.from_numpy(xi), tensor(f"{dst}.weight"), tensor(f"{dst}.bias")),
        )

    dense(f"{IMG}/head", PROJECTOR.rstrip("."), "vision.head")
    s, b = leaves(f"{IMG}/Transformer/encoder_norm/scale", f"{IMG}/Transformer/encoder_norm/bias")
    record("vision.post_layernorm", s, tensor(f"{VISION}post_layernorm.weight"))
    record("vision.post_layernorm", b, tensor(f"{VISION}post_layernorm.bias"))
    names = ["action_in_proj", "action_out_proj"]
    names += (
        ["time_mlp_in", "time_mlp_out"]
        if dims.pi05
        else ["state_proj", "action_time_mlp_in", "action_time_mlp_out"]
    )
    for name in names:
        dense(name, name, "projections")
    for expert, e in enumerate(dims.experts):
        sfx = expert_suffix(expert)
        final = f"{LLM}/final_norm{sfx}"
        if e.adarms_cond_dim is None:
            record(
                "final_norm", leaves(f"{final}/scale")[0], tensor(LANGUAGE[expert] + "norm.weight")
            )
        else:
            dense(f"{final}/Dense_0", LANGUAGE[expert] + "norm.dense", "final_norm.adarms_dense")
    table = leaves(f"{LLM}/embedder/input_embedding")[0]
    ids = np.random.default_rng(0).integers(0, table.shape[0], 64)
    emb = tensor(LANGUAGE[0] + "embed_tokens.weight")
    record("embed_tokens", table[ids].astype(np.float32), emb[torch.from_numpy(ids)])
