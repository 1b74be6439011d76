"""Infer every pi0 / pi0.5 dimension from the checkpoint's own keys and shapes.

openpi's converter keys pi0.5 off the substring "pi05" in the path and hard-codes Gemma-2B /
Gemma-300M dims; here the tensors decide: `time_mlp_in` => pi0.5, `state_proj` => pi0, (N, D, H) from
`q_einsum/w`, K from `kv_einsum/w`, F from `mlp/linear`, LoRA ranks from `lora_a.shape[-1]`.
`expected_leaves` then rebuilds the full tree so that every unknown, missing or misshapen leaf is
named before a single byte is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vla_convert.errors import LeafShapeError, MissingLeafError, UnknownLeafError

LLM = "PaliGemma/llm"
IMG = "PaliGemma/img"
ENC = f"{IMG}/Transformer/encoderblock"


def expert_suffix(expert: int) -> str:
    """openpi's `_name(name, i)`: no suffix for the PaliGemma expert, `_i` for the others."""
    return "" if expert == 0 else f"_{expert}"


@dataclass(frozen=True)
class GemmaDims:
    """One Gemma expert of the joint transformer (`gemma.py::Config` fields that have shapes)."""

    width: int  # D
    depth: int  # L
    mlp_dim: int  # F
    num_heads: int  # N
    num_kv_heads: int  # K
    head_dim: int  # H
    attn_lora_rank: int | None = None  # rank of q/kv/attn_vec LoRA, None without adapters
    ffn_lora_rank: int | None = None  # rank of gating/linear LoRA
    adarms_cond_dim: int | None = None  # pi0.5 expert norms: Dense(cond_dim -> 3D)

    def __post_init__(self) -> None:
        for name in ("width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GemmaDims.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )

    @property
    def fused_qkv(self) -> bool:
        """openpi uses `qkv_einsum` (3,N,D,H) exactly when K == N, else `q_einsum` + `kv_einsum`."""
        return self.num_kv_heads == self.num_heads


@dataclass(frozen=True)
class VisionDims:
    """The SigLIP tower (big_vision ViT, `pool_type="none"`) and its linear `head`."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    head_dim: int
    patch_size: int
    num_patches: int  # learned position embeddings: (image_size / patch_size) ** 2
    out_width: int  # `head` output = PaliGemma width

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"VisionDims.{name} must be positive, got {value}")


@dataclass(frozen=True)
class OpenpiDims:
    """Everything needed to map, validate and rebuild an openpi pi0 / pi0.5 parameter tree."""

    pi05: bool
    vision: VisionDims
    paligemma: GemmaDims
    expert: GemmaDims
    vocab_size: int
    action_dim: int
    state_dim: int | None  # pi0's continuous state token; None for pi0.5 (state is in the prompt)

    def __post_init__(self) -> None:
        if self.pi05 != (self.state_dim is None):
            raise ValueError("pi0 has a state_dim, pi0.5 has none")
        if self.pi05 != (self.expert.adarms_cond_dim is not None):
            raise ValueError("exactly pi0.5 has adaRMS norms in the action expert")
        if self.paligemma.adarms_cond_dim is not None:
            raise ValueError("the PaliGemma expert never uses adaRMS")
        if self.vision.out_width != self.paligemma.width:
            raise ValueError(
                f"img/head width {self.vision.out_width} != PaliGemma width {self.paligemma.width}"
            )
        a, b = self.paligemma, self.expert
        if (a.depth, a.num_heads, a.num_kv_heads, a.head_dim) != (
            b.depth,
            b.num_heads,
            b.num_kv_heads,
            b.head_dim,
        ):
            raise ValueError(
                "openpi requires both experts to share depth, heads, kv heads and head_dim; got "
                f"{a} and {b}"
            )

    @property
    def experts(self) -> tuple[GemmaDims, GemmaDims]:
        return (self.paligemma, self.expert)

    @property
    def has_lora(self) -> bool:
        return any(e.attn_lora_rank or e.ffn_lora_rank for e in self.experts)


def _shape(leaves: Mapping[str, tuple[int, ...]], key: str, ndim: int) -> tuple[int, ...]:
    if key not in leaves:
        raise MissingLeafError(f"checkpoint has no leaf {key} (needed to infer the architecture)")
    shape = tuple(leaves[key])
    if len(shape) != ndim:
        raise LeafShapeError(f"leaf {key} has shape {shape}, expected {ndim} dimensions")
    return shape


def _infer_gemma(leaves: Mapping[str, tuple[int, ...]], expert: int) -> GemmaDims:
    sfx = expert_suffix(expert)
    attn = f"{LLM}/layers/attn"
    if f"{attn}/qkv_einsum{sfx}/w" in leaves:
        depth, three, num_heads, width, head_dim = _shape(leaves, f"{attn}/qkv_einsum{sfx}/w", 5)
        if three != 3:
            raise LeafShapeError(f"{attn}/qkv_einsum{sfx}/w axis 1 is {three}, expected 3")
        num_kv_heads = num_heads
        lora_key = f"{attn}/qkv_einsum{sfx}/lora_a"
    else:
        depth, num_heads, width, head_dim = _shape(leaves, f"{attn}/q_einsum{sfx}/w", 4)
        num_kv_heads = _shape(leaves, f"{attn}/kv_einsum{sfx}/w", 5)[2]
        lora_key = f"{attn}/q_einsum{sfx}/lora_a"
    mlp_dim = _shape(leaves, f"{LLM}/layers/mlp{sfx}/linear", 3)[1]
    attn_rank = leaves[lora_key][-1] if lora_key in leaves else None
    ffn_key = f"{LLM}/layers/mlp{sfx}/linear_lora_a"
    ffn_rank = leaves[ffn_key][-1] if ffn_key in leaves else None
    dense = f"{LLM}/layers/pre_attention_norm{sfx}/Dense_0/kernel"
    cond = _shape(leaves, dense, 3)[1] if dense in leaves else None
    try:
        return GemmaDims(
            width=width,
            depth=depth,
            mlp_dim=mlp_dim,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            attn_lora_rank=attn_rank,
            ffn_lora_rank=ffn_rank,
            adarms_cond_dim=cond,
        )
    except ValueError as exc:
        raise LeafShapeError(f"inconsistent shapes for expert {expert}: {exc}") from exc


def infer_dims(leaves: Mapping[str, tuple[int, ...]]) -> OpenpiDims:
    """Dimensions of the model whose parameter tree is `leaves` (key -> shape, `/value` stripped)."""
    has_time_mlp = "time_mlp_in/kernel" in leaves
    has_state = "state_proj/kernel" in leaves
    if has_time_mlp == has_state:
        raise MissingLeafError(
            "cannot tell pi0 from pi0.5: expected exactly one of time_mlp_in/kernel (pi0.5) and "
            f"state_proj/kernel (pi0); found time_mlp_in={has_time_mlp}, state_proj={has_state}"
        )
    pi05 = has_time_mlp
    patch, _, _, v_width = _shape(leaves, f"{IMG}/embedding/kernel", 4)
    v_depth, _, v_heads, v_head_dim = _shape(
        leaves, f"{ENC}/MultiHeadDotProductAttention_0/query/kernel", 4
    )
    vision = VisionDims(
        width=v_width,
        depth=v_depth,
        mlp_dim=_shape(leaves, f"{ENC}/MlpBlock_0/Dense_0/kernel", 3)[2],
        num_heads=v_heads,
        head_dim=v_head_dim,
        patch_size=patch,
        num_patches=_shape(leaves, f"{IMG}/pos_embedding", 3)[1],
        out_width=_shape(leaves, f"{IMG}/head/kernel", 2)[1],
    )
    vocab_size = _shape(leaves, f"{LLM}/embedder/input_embedding", 2)[0]
    action_dim = _shape(leaves, "action_in_proj/kernel", 2)[0]
    state_dim = None if pi05 else _shape(leaves, "state_proj/kernel", 2)[0]
    try:
        return OpenpiDims(
            pi05=pi05,
            vision=vision,
            paligemma=_infer_gemma(leaves, 0),
            expert=_infer_gemma(leaves, 1),
            vocab_size=vocab_size,
            action_dim=action_dim,
            state_dim=state_dim,
        )
    except ValueError as exc:
        if isinstance(exc, LeafShapeError | MissingLeafError):
            raise
        raise LeafShapeError(f"inconsistent checkpoint shapes: {exc}") from exc


def _gemma_leaves(e: GemmaDims, expert: int, pi05: bool) -> dict[str, tuple[int, ...]]:
    sfx = expert_suffix(expert)
    L, N, K, D, H, F = e.depth, e.num_heads, e.num_kv_heads, e.width, e.head_dim, e.mlp_dim
    attn, mlp = f"{LLM}/layers/attn", f"{LLM}/layers/mlp{sfx}"
    out: dict[str, tuple[int, ...]] = {}
    einsums: dict[str, tuple[int, ...]] = {}
    if e.fused_qkv:
        einsums[f"{attn}/qkv_einsum{sfx}"] = (L, 3, N, D, H)
    else:
        einsums[f"{attn}/q_einsum{sfx}"] = (L, N, D, H)
        einsums[f"{attn}/kv_einsum{sfx}"] = (L, 2, K, D, H)
    einsums[f"{attn}/attn_vec_einsum{sfx}"] = (L, N, H, D)
    for name, shape in einsums.items():
        out[f"{name}/w"] = shape
        if e.attn_lora_rank is not None:
            r = e.attn_lora_rank
            out[f"{name}/lora_a"] = (*shape[:-1], r)
            out[f"{name}/lora_b"] = (*shape[:-2], r, shape[-1])
    out[f"{mlp}/gating_einsum"] = (L, 2, D, F)
    out[f"{mlp}/linear"] = (L, F, D)
    if e.ffn_lora_rank is not None:
        r = e.ffn_lora_rank
        out[f"{mlp}/gating_einsum_lora_a"] = (L, 2, D, r)
        out[f"{mlp}/gating_einsum_lora_b"] = (L, 2, r, F)
        out[f"{mlp}/linear_lora_a"] = (L, F, r)
        out[f"{mlp}/linear_lora_b"] = (L, r, D)
    for norm in ("pre_attention_norm", "pre_ffw_norm"):
        if e.adarms_cond_dim is not None:
            out[f"{LLM}/layers/{norm}{sfx}/Dense_0/kernel"] = (L, e.adarms_cond_dim, 3 * D)
            out[f"{LLM}/layers/{norm}{sfx}/Dense_0/bias"] = (L, 3 * D)
        else:
            out[f"{LLM}/layers/{norm}{sfx}/scale"] = (L, D)
    if e.adarms_cond_dim is not None:
        out[f"{LLM}/final_norm{sfx}/Dense_0/kernel"] = (e.adarms_cond_dim, 3 * D)
        out[f"{LLM}/final_norm{sfx}/Dense_0/bias"] = (3 * D,)
    else:
        out[f"{LLM}/final_norm{sfx}/scale"] = (D,)
    return out


def expected_leaves(dims: OpenpiDims) -> dict[str, tuple[int, ...]]:
    """The full openpi parameter tree (key -> shape) of a model with these dimensions."""
    v = dims.vision
    out: dict[str, tuple[int, ...]] = {
        f"{IMG}/embedding/kernel": (v.patch_size, v.patch_size, 3, v.width),
        f"{IMG}/embedding/bias": (v.width,),
        f"{IMG}/pos_embedding": (1, v.num_patches, v.width),
    }
    Lv = v.depth
    for ln in ("LayerNorm_0", "LayerNorm_1"):
        out[f"{ENC}/{ln}/scale"] = (Lv, v.width)
        out[f"{ENC}/{ln}/bias"] = (Lv, v.width)
    out[f"{ENC}/MlpBlock_0/Dense_0/kernel"] = (Lv, v.width, v.mlp_dim)
    out[f"{ENC}/MlpBlock_0/Dense_0/bias"] = (Lv, v.mlp_dim)
    out[f"{ENC}/MlpBlock_0/Dense_1/kernel"] = (Lv, v.mlp_dim, v.width)
    out[f"{ENC}/MlpBlock_0/Dense_1/bias"] = (Lv, v.width)
    mha = f"{ENC}/MultiHeadDotProductAttention_0"
    for proj in ("query", "key", "value"):
        out[f"{mha}/{proj}/kernel"] = (Lv, v.width, v.num_heads, v.head_dim)
        out[f"{mha}/{proj}/bias"] = (Lv, v.num_heads, v.head_dim)
    out[f"{mha}/out/kernel"] = (Lv, v.num_heads, v.head_dim, v.width)
    out[f"{mha}/out/bias"] = (Lv, v.width)
    out[f"{IMG}/Transformer/encoder_norm/scale"] = (v.width,)
    out[f"{IMG}/Transformer/encoder_norm/bias"] = (v.width,)
    out[f"{IMG}/head/kernel"] = (v.width, v.out_width)
    out[f"{IMG}/head/bias"] = (v.out_width,)
    out[f"{LLM}/embedder/input_embedding"] = (dims.vocab_size, dims.paligemma.width)
    for i, e in enumerate(dims.experts):
        out.update(_gemma_leaves(e, i, dims.pi05))
    De = dims.expert.width
    projections: dict[str, tuple[int, int]] = {
        "action_in_proj": (dims.action_dim, De),
        "action_out_proj": (De, dims.action_dim),
    }
    if dims.pi05:
        projections["time_mlp_in"] = (De, De)
        projections["time_mlp_out"] = (De, De)
    else:
        assert dims.state_dim is not None
        projections["state_proj"] = (dims.state_dim, De)
        projections["action_time_mlp_in"] = (2 * De, De)
        projections["action_time_mlp_out"] = (De, De)
    for name, (fan_in, fan_out) in projections.items():
        out[f"{name}/kernel"] = (fan_in, fan_out)
        out[f"{name}/bias"] = (fan_out,)
    return out


def validate_leaves(leaves: Mapping[str, tuple[int, ...]], dims: OpenpiDims) -> None:
    """Raise, naming every offender, unless `leaves` is exactly the tree `dims` describes."""
    expected = expected_leaves(dims)
    unknown = sorted(set(leaves) - set(expected))
    if unknown:
        raise UnknownLeafError(
            f"{len(unknown)} checkpoint leaf(s) match no conversion rule and would be dropped: "
            + ", ".join(f"{k} {tuple(leaves[k])}" for k in unknown)
        )
    missing = sorted(set(expected) - set(leaves))
    if missing:
        raise MissingLeafError(
            f"{len(missing)} leaf(s) required by the inferred architecture are absent: "
            + ", ".join(f"{k} {expected[k]}" for k in missing)
        )
    wrong = [(k, tuple(leaves[k]), s) for k, s in expected.items() if tuple(leaves[k]) != s]
    if wrong:
        raise LeafShapeError(
            "leaf shape(s) disagree with the inferred dimensions: "
            + ", ".join(f"{k} has {got}, expected {want}" for k, got, want in wrong)
        )
