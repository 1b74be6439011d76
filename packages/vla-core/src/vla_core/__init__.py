"""pi0 / pi0.5 VLA engine: joint attention, backends, checkpointing, prefix KV cache."""

from importlib.metadata import version as _version

from vla_core.attention import (
    ATTENTION_IMPLEMENTATIONS,
    attend,
    flex_attention_available,
    validate_attention_implementation,
)
from vla_core.checkpointing import (
    apply_activation_checkpointing,
    is_activation_checkpointed,
    remove_activation_checkpointing,
)
from vla_core.config import (
    GEMMA_PRESETS,
    SIGLIP_PRESETS,
    GemmaConfig,
    JointEngineConfig,
    PI0Config,
    SiglipConfig,
    gemma_config,
    siglip_config,
)
from vla_core.engine import EngineOutput, JointEngine, PrefixCache
from vla_core.filters import ImageTokenFilter
from vla_core.layers import JointDecoderLayer, RMSNorm
from vla_core.masks import BlockCausalMask
from vla_core.pi0 import Observation, PI0Model, Prefix, Suffix, posemb_sincos
from vla_core.vision import VisionTower

__version__ = _version("vla-core")

__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "GEMMA_PRESETS",
    "SIGLIP_PRESETS",
    "BlockCausalMask",
    "EngineOutput",
    "GemmaConfig",
    "ImageTokenFilter",
    "JointDecoderLayer",
    "JointEngine",
    "JointEngineConfig",
    "Observation",
    "PI0Config",
    "PI0Model",
    "Prefix",
    "PrefixCache",
    "RMSNorm",
    "SiglipConfig",
    "Suffix",
    "VisionTower",
    "__version__",
    "apply_activation_checkpointing",
    "attend",
    "flex_attention_available",
    "gemma_config",
    "is_activation_checkpointed",
    "posemb_sincos",
    "remove_activation_checkpointing",
    "siglip_config",
    "validate_attention_implementation",
]
