"""SigLIP vision tower built from transformers' SigLIP blocks, with our own (short) forward.

We compose `SiglipVisionEmbeddings` + `SiglipEncoderLayer`s + post LayerNorm instead of
`SiglipVisionModel` so the dtype policy is explicit: patch / position embeddings run in fp32
(openpi parity), then the tokens are cast to the tower's compute dtype. No pooling head.
Parameter names match transformers' (`embeddings.patch_embedding`, `encoder.layers.i...`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from vla_core.engine_config import SiglipConfig

if TYPE_CHECKING:
    from transformers import SiglipVisionConfig

__all__ = ["VisionTower", "to_hf_siglip_config"]


def to_hf_siglip_config(config: SiglipConfig, attention_implementation: str) -> SiglipVisionConfig:
    # Imported here so `import vla_core` (e.g. for `attend`) does not pay for transformers.
    from transformers import SiglipVisionConfig

    hf = SiglipVisionConfig(
        hidden_size=config.width,
        intermediate_size=config.mlp_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        num_channels=3,
        image_size=config.image_size,
        patch_size=config.patch_size,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=config.layer_norm_eps,
        attention_dropout=0.0,
        vision_use_head=False,
    )
    # The vision tower has no mask; eager keeps fp32-exact reference semantics, else SDPA.
    hf._attn_implementation = "eager" if attention_implementation == "eager" else "sdpa"
    return hf


class VisionTower(nn.Module):
    """images [N, 3, H, W] in [-1, 1] -> tokens [N, num_patches, width] (post LayerNorm)."""

    def __init__(self, config: SiglipConfig, attention_implementation: str = "sdpa") -> None:
        super().__init__()
        from transformers.models.siglip.modeling_siglip import (
            SiglipEncoder,
            SiglipVisionEmbeddings,
        )

        self.config = config
        hf = to_hf_siglip_config(config, attention_implementation)
        self.embeddings = SiglipVisionEmbeddings(hf)
        self.encoder = SiglipEncoder(hf)  # type: ignore[arg-type]
        self.post_layernorm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward(self, images: Tensor) -> Tensor:
        expected = (3, self.config.image_size, self.config.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be [N, {expected}], got {tuple(images.shape)}")
        tokens = self.embeddings(images.float())  # fp32 island: patch conv + position embedding
        compute_dtype = self.post_layernorm.weight.dtype
        tokens = self.encoder(inputs_embeds=tokens.to(compute_dtype)).last_hidden_state
        return self.post_layernorm(tokens)
