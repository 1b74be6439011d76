"""The JAX (openpi Flax) -> openpi-PyTorch (`PI0Pytorch` state dict) tensor mapping, as a plan.

A plan is a list of rules. Each rule consumes a few checkpoint leaves (a weight and its LoRA
factors), merges LoRA in float32 and yields its PyTorch tensors layer by layer, so a converter can
stream: at most one source leaf group plus one layer's float32 tensors are alive at a time.
Reshapes use the general formulas (no D == N*H, no K == 1 assumption):
  q  (N,D,H) -> (N*H, D)   k/v (K,D,H) -> (K*H, D)   o (N,H,D) -> (D, N*H)   Dense (in,out) -> (out,in)
The unused expert `lm_head` is never produced; the token embedding is written as `embed_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from vla_convert.dims import ENC, IMG, LLM, GemmaDims, OpenpiDims, expert_suffix
from vla_convert.lora import (
    ATTN_VEC_EINSUM,
    KV_EINSUM,
    Q_EINSUM,
    QKV_EINSUM,
    LoraSpec,
    merge_einsum_lora,
    merge_ffn_lora,
)

PREFIX = "paligemma_with_expert."
VISION = f"{PREFIX}paligemma.model.vision_tower.vision_model."
PROJECTOR = f"{PREFIX}paligemma.model.multi_modal_projector.linear."
LANGUAGE = (f"{PREFIX}paligemma.model.language_model.", f"{PREFIX}gemma_expert.model.")

Reader = Callable[[str], Tensor]
Tensors = Iterator[tuple[str, Tensor]]


@dataclass
class Rule:
    """Leaves `sources` become tensors `targets` (name -> shape) through `produce(read)`."""

    sources: tuple[str, ...]
    targets: dict[str, tuple[int, ...]]
    produce: Callable[[Reader], Tensors]
    lora_modules: list[str] = field(default_factory=list)  # merged adapter modules, for summaries


def _materialise(x: Tensor) -> Tensor:
    """Leave (strided) views as they are: the streaming writer transposes and casts chunk-wise in
    one pass into a reused buffer (a separate transpose-copy here cost one more pass over every
    transposed weight). `map_params` makes its results contiguous."""
    return x


def as_tensor(array: np.ndarray) -> Tensor:
    """Zero-copy torch view of a restored leaf (ml_dtypes bfloat16 via its int16 bits)."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _dense(src: str, dst: str, fan_in: int, fan_out: int) -> Rule:
    """Flax Dense `kernel (in,out)`, `bias (out,)` -> torch Linear `weight (out,in)`, `bias`."""

    def produce(read: Reader) -> Tensors:
        yield f"{dst}.weight", _materialise(read(f"{src}/kernel").T)
        yield f"{dst}.bias", _materialise(read(f"{src}/bias"))

    return Rule(
        (f"{src}/kernel", f"{src}/bias"),
        {f"{dst}.weight": (fan_out, fan_in), f"{dst}.bias": (fan_out,)},
        produce,
    )


def _copy(src: str, dst: str, shape: tuple[int, ...]) -> Rule:
    def produce(read: Reader) -> Tensors:
        yield dst, _materialise(read(src)).reshape(shape)

    return Rule((src,), {dst: shape}, produce)


def _stacked(
    sources: tuple[str, ...],
    depth: int,
    per_layer: Callable[[int, dict[str, Tensor]], Tensors],
    targets: dict[str, tuple[int, ...]],
    lora_modules: list[str] | None = None,
) -> Rule:
    """A rule over scanned leaves (leading depth axis): read once, emit layer by layer."""

    def produce(read: Reader) -> Tensors:
        arrays = {key: read(key) for key in sources}
        for i in range(depth):
            yield from per_layer(i, {key: a[i] for key, a in arrays.items()})

    return Rule(sources, targets, produce, lora_modules or [])


def _vision_rules(dims: OpenpiDims) -> list[Rule]:
    v = dims.vision
    nh = v.num_heads * v.head_dim
    rules = [
        _conv_rule(v.width, v.patch_size),
        _copy(
            f"{IMG}/pos_embedding",
            f"{VISION}embeddings.position_embedding.weight",
            (v.num_patches, v.width),
        ),
    ]
    layer = f"{VISION}encoder.layers.{{i}}."
    for ln, torch_ln in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
        for jax_p, torch_p in (("scale", "weight"), ("bias", "bias")):
            rules.append(
                _scale_rule(
                    f"{ENC}/{ln}/{jax_p}", layer + f"{torch_ln}.{torch_p}", v.depth, v.width
                )
            )
    for dense, fc, (fan_in, fan_out) in (
        ("Dense_0", "fc1", (v.width, v.mlp_dim)),
        ("Dense_1", "fc2", (v.mlp_dim, v.width)),
    ):
        src = f"{ENC}/MlpBlock_0/{dense}"
        rules.append(_stacked_dense(src, layer + f"mlp.{fc}", v.depth, fan_in, fan_out))
    mha = f"{ENC}/MultiHeadDotProductAttention_0"
    for jax_p, torch_p in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        src, dst = f"{mha}/{jax_p}", layer + f"self_attn.{torch_p}"

        def qkv(i: int, a: dict[str, Tensor], src: str = src, dst: str = dst) -> Tensors:
            kernel = a[f"{src}/kernel"]  # (D, N, Hd)
            yield dst.format(i=i) + ".weight", _materialise(kernel.reshape(kernel.shape[0], -1).T)
            yield dst.format(i=i) + ".bias", _materialise(a[f"{src}/bias"].reshape(-1))

        rules.append(
            _stacked(
                (f"{src}/kernel", f"{src}/bias"),
                v.depth,
                qkv,
                _layer_targets(dst, v.depth, {".weight": (nh, v.width), ".bias": (nh,)}),
            )
        )
    src, dst = f"{mha}/out", layer + "self_attn.out_proj"

    def out_proj(i: int, a: dict[str, Tensor]) -> Tensors:
        kernel = a[f"{src}/kernel"]  # (N, Hd, D)
        yield dst.format(i=i) + ".weight", _materialise(kernel.reshape(-1, kernel.shape[-1]).T)
        yield dst.format(i=i) + ".bias", _materialise(a[f"{src}/bias"])

    rules.append(
        _stacked(
            (f"{src}/kernel", f"{src}/bias"),
            v.depth,
            out_proj,
            _layer_targets(dst, v.depth, {".weight": (v.width, nh), ".bias": (v.width,)}),
        )
    )
    for jax_p, torch_p in (("scale", "weight"), ("bias", "bias")):
        rules.append(
            _copy(
                f"{IMG}/Transformer/encoder_norm/{jax_p}",
                f"{VISION}post_layernorm.{torch_p}",
                (v.width,),
            )
        )
    rules.append(_dense(f"{IMG}/head", PROJECTOR.rstrip("."), v.width, v.out_width))
    return rules


def _conv_rule(width: int, patch: int) -> Rule:
    src, dst = f"{IMG}/embedding", f"{VISION}embeddings.patch_embedding"

    def produce(read: Reader) -> Tensors:
        # Flax conv kernel HWIO -> torch OIHW
        yield f"{dst}.weight", _materialise(read(f"{src}/kernel").permute(3, 2, 0, 1))
        yield f"{dst}.bias", _materialise(read(f"{src}/bias"))

    return Rule(
        (f"{src}/kernel", f"{src}/bias"),
        {f"{dst}.weight": (width, 3, patch, patch), f"{dst}.bias": (width,)},
        produce,
    )


def _layer_targets(
    pattern: str, depth: int, parts: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    return {pattern.format(i=i) + p: s for i in range(depth) for p, s in parts.items()}


def _stacked_dense(src: str, dst: str, depth: int, fan_in: int, fan_out: int) -> Rule:
    def per_layer(i: int, a: dict[str, Tensor]) -> Tensors:
        yield dst.format(i=i) + ".weight", _materialise(a[f"{src}/kernel"].T)
        yield dst.format(i=i) + ".bias", _materialise(a[f"{src}/bias"])

    return _stacked(
        (f"{src}/kernel", f"{src}/bias"),
        depth,
        per_layer,
        _layer_targets(dst, depth, {".weight": (fan_out, fan_in), ".bias": (fan_out,)}),
    )


def _einsum_rule(
    e: GemmaDims,
    name: str,
    eqn: str,
    spec: LoraSpec | None,
    emit: Callable[[int, Tensor], Tensors],
    targets: dict[str, tuple[int, ...]],
) -> Rule:
    """One attention Einsum weight (+ its `lora_a`/`lora_b` children, merged with scale s)."""
    w_key = f"{name}/w"
    if spec is None:
        return _stacked((w_key,), e.depth, lambda i, a: emit(i, _materialise(a[w_key])), targets)
    a_key, b_key = f"{name}/lora_a", f"{name}/lora_b"

    def per_layer(i: int, a: dict[str, Tensor]) -> Tensors:
        yield from emit(i, merge_einsum_lora(eqn, a[w_key], a[a_key], a[b_key], spec.scale))

    return _stacked((w_key, a_key, b_key), e.depth, per_layer, targets, [name])


def _ffn_rule(
    e: GemmaDims,
    key: str,
    with_lora: bool,
    emit: Callable[[int, Tensor], Tensors],
    targets: dict[str, tuple[int, ...]],
) -> Rule:
    """A FeedForward weight (+ its `_lora_a`/`_lora_b` siblings, merged WITHOUT scaling)."""
    if not with_lora:
        return _stacked((key,), e.depth, lambda i, a: emit(i, _materialise(a[key])), targets)
    a_key, b_key = f"{key}_lora_a", f"{key}_lora_b"

    def per_layer(i: int, a: dict[str, Tensor]) -> Tensors:
        yield from emit(i, merge_ffn_lora(a[key], a[a_key], a[b_key]))

    return _stacked((key, a_key, b_key), e.depth, per_layer, targets, [key])


def _gemma_rules(e: GemmaDims, expert: int, spec: LoraSpec | None) -> list[Rule]:
    sfx = expert_suffix(expert)
    L, N, K, D, H, F = e.depth, e.num_heads, e.num_kv_heads, e.width, e.head_dim, e.mlp_dim
    layer = LANGUAGE[expert] + "layers.{i}."
    attn = f"{LLM}/layers/attn"
    rules: list[Rule] = []
    if (e.attn_lora_rank is not None) != (spec is not None):
        raise ValueError(f"expert {expert}: LoRA spec given without adapters or vice versa")

    def heads_to_rows(w: Tensor) -> Tensor:  # (X, D, H) -> (X*H, D)
        return w.permute(0, 2, 1).reshape(-1, w.shape[1]).contiguous()

    def q_out(i: int, w: Tensor) -> Tensors:
        yield layer.format(i=i) + "self_attn.q_proj.weight", heads_to_rows(w)

    def kv_out(i: int, w: Tensor) -> Tensors:  # (2, K, D, H)
        yield layer.format(i=i) + "self_attn.k_proj.weight", heads_to_rows(w[0])
        yield layer.format(i=i) + "self_attn.v_proj.weight", heads_to_rows(w[1])

    def qkv_out(i: int, w: Tensor) -> Tensors:  # (3, N, D, H)
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            yield layer.format(i=i) + f"self_attn.{proj}.weight", heads_to_rows(w[j])

    def o_out(i: int, w: Tensor) -> Tensors:  # (N, H, D) -> (D, N*H)
        yield (
            layer.format(i=i) + "self_attn.o_proj.weight",
            _materialise(w.reshape(-1, w.shape[-1]).T),
        )

    q_t = _layer_targets(layer + "self_attn.q_proj", L, {".weight": (N * H, D)})
    k_t = _layer_targets(layer + "self_attn.k_proj", L, {".weight": (K * H, D)})
    v_t = _layer_targets(layer + "self_attn.v_proj", L, {".weight": (K * H, D)})
    o_t = _layer_targets(layer + "self_attn.o_proj", L, {".weight": (D, N * H)})
    if e.fused_qkv:
        rules.append(
            _einsum_rule(e, f"{attn}/qkv_einsum{sfx}", QKV_EINSUM, spec, qkv_out, q_t | k_t | v_t)
        )
    else:
        rules.append(_einsum_rule(e, f"{attn}/q_einsum{sfx}", Q_EINSUM, spec, q_out, q_t))
        rules.append(_einsum_rule(e, f"{attn}/kv_einsum{sfx}", KV_EINSUM, spec, kv_out, k_t | v_t))
    rules.append(_einsum_rule(e, f"{attn}/attn_vec_einsum{sfx}", ATTN_VEC_EINSUM, spec, o_out, o_t))

    mlp = f"{LLM}/layers/mlp{sfx}"
    ffn_lora = e.ffn_lora_rank is not None

    def gating_out(i: int, w: Tensor) -> Tensors:  # (2, D, F): 0 = gate, 1 = up
        yield layer.format(i=i) + "mlp.gate_proj.weight", _materialise(w[0].T)
        yield layer.format(i=i) + "mlp.up_proj.weight", _materialise(w[1].T)

    def linear_out(i: int, w: Tensor) -> Tensors:  # (F, D)
        yield layer.format(i=i) + "mlp.down_proj.weight", _materialise(w.T)

    rules.append(
        _ffn_rule(
            e,
            f"{mlp}/gating_einsum",
            ffn_lora,
            gating_out,
            _layer_targets(
                layer + "mlp.", L, {"gate_proj.weight": (F, D), "up_proj.weight": (F, D)}
            ),
        )
    )
    rules.append(
        _ffn_rule(
            e,
            f"{mlp}/linear",
            ffn_lora,
            linear_out,
            _layer_targets(layer + "mlp.down_proj", L, {".weight": (D, F)}),
        )
    )

    norms = (
        ("pre_attention_norm", "input_layernorm"),
        ("pre_ffw_norm", "post_attention_layernorm"),
    )
    for jax_norm, torch_norm in norms:
        src = f"{LLM}/layers/{jax_norm}{sfx}"
        if e.adarms_cond_dim is None:
            rules.append(_scale_rule(f"{src}/scale", layer + f"{torch_norm}.weight", L, D))
        else:
            rules.append(
                _stacked_dense(
                    f"{src}/Dense_0", layer + f"{torch_norm}.dense", L, e.adarms_cond_dim, 3 * D
                )
            )
    final = f"{LLM}/final_norm{sfx}"
    if e.adarms_cond_dim is None:
        rules.append(_copy(f"{final}/scale", LANGUAGE[expert] + "norm.weight", (D,)))
    else:
        rules.append(
            _dense(f"{final}/Dense_0", LANGUAGE[expert] + "norm.dense", e.adarms_cond_dim, 3 * D)
        )
    return rules


def _scale_rule(src: str, dst: str, depth: int, width: int) -> Rule:
    """A stacked (L, width) leaf -> one (width,) tensor per layer (norm scales, biases)."""

    def per_layer(i: int, a: dict[str, Tensor]) -> Tensors:
        yield dst.format(i=i), _materialise(a[src])

    return _stacked((src,), depth, per_layer, _layer_targets(dst, depth, {"": (width,)}))


def build_plan(dims: OpenpiDims, lora: tuple[LoraSpec | None, LoraSpec | None]) -> list[Rule]:
    """Every rule needed to turn the tree `dims` describes into openpi-PyTorch tensors."""
    rules = _vision_rules(dims)
    rules.append(
        _copy(
            f"{LLM}/embedder/input_embedding",
            LANGUAGE[0] + "embed_tokens.weight",
            (dims.vocab_size, dims.paligemma.width),
        )
    )
    for i, e in enumerate(dims.experts):
        rules.extend(_gemma_rules(e, i, lora[i]))
    De = dims.expert.width
    rules.append(_dense("action_in_proj", "action_in_proj", dims.action_dim, De))
    rules.append(_dense("action_out_proj", "action_out_proj", De, dims.action_dim))
    if dims.pi05:
        rules.append(_dense("time_mlp_in", "time_mlp_in", De, De))
        rules.append(_dense("time_mlp_out", "time_mlp_out", De, De))
    else:
        assert dims.state_dim is not None
        rules.append(_dense("state_proj", "state_proj", dims.state_dim, De))
        rules.append(_dense("action_time_mlp_in", "action_time_mlp_in", 2 * De, De))
        rules.append(_dense("action_time_mlp_out", "action_time_mlp_out", De, De))
    return rules


def plan_targets(rules: list[Rule]) -> dict[str, tuple[int, ...]]:
    """All target tensors in production order; raises if two rules write the same name."""
    out: dict[str, tuple[int, ...]] = {}
    for rule in rules:
        for name, shape in rule.targets.items():
            if name in out:
                raise ValueError(f"two mapping rules produce {name}")
            out[name] = shape
    return out


def map_params(params: dict[str, np.ndarray], rules: list[Rule]) -> dict[str, Tensor]:
    """Apply a plan to an in-memory flat tree (tests and small models); float32 results."""
    tensors = {key: as_tensor(array) for key, array in params.items()}
    return {
        name: tensor.float().contiguous()
        for rule in rules
        for name, tensor in rule.produce(tensors.__getitem__)
    }
