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
    has_activation_checkpointing,
    is_activation_checkpointed,
    remove_activation_checkpointing,
)
from vla_core.config import (
    GEMMA3_EXPERT_PRESETS,
    GEMMA3_PRESETS,
    GEMMA_PRESETS,
    SIGLIP_PRESETS,
    Gemma3Config,
    Gemma3EngineConfig,
    GemmaConfig,
    JointEngineConfig,
    PI0Config,
    SiglipConfig,
    engine_family,
    gemma3_config,
    gemma3_expert_config,
    gemma3_policy_config,
    gemma_config,
    siglip_config,
)
from vla_core.engine import EngineOutput, JointEngine, PrefixCache
from vla_core.engine_config import ENGINE_FAMILIES
from vla_core.engine_factory import build_engine
from vla_core.filters import ImageTokenFilter
from vla_core.gemma3 import Gemma3JointEngine
from vla_core.layers import JointDecoderLayer, RMSNorm, StreamBlock
from vla_core.masks import BlockCausalMask
from vla_core.pi0 import PARAMETER_GROUPS, Observation, PI0Model, Prefix, Suffix
from vla_core.rtc import (
    PREFIX_SCHEDULES,
    PrefixSchedule,
    RTCConfig,
    RTCGuidance,
    flow_time,
    guidance_weight,
    guided_velocity,
    paper_time,
    prefix_weights,
)
from vla_core.time_arithmetic import (
    TIME_ARITHMETICS,
    TimeArithmetic,
    euler_time_grid,
    posemb_sincos,
)
from vla_core.vision import VisionTower

__version__ = _version("vla-core")

__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "ENGINE_FAMILIES",
    "GEMMA_PRESETS",
    "PARAMETER_GROUPS",
    "PREFIX_SCHEDULES",
    "SIGLIP_PRESETS",
    "TIME_ARITHMETICS",
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
    "PrefixSchedule",
    "RMSNorm",
    "RTCConfig",
    "RTCGuidance",
    "SiglipConfig",
    "Suffix",
    "TimeArithmetic",
    "VisionTower",
    "__version__",
    "apply_activation_checkpointing",
    "attend",
    "build_engine",
    "engine_family",
    "euler_time_grid",
    "flex_attention_available",
    "flow_time",
    "gemma_config",
    "guidance_weight",
    "guided_velocity",
    "has_activation_checkpointing",
    "is_activation_checkpointed",
    "paper_time",
    "posemb_sincos",
    "prefix_weights",
    "remove_activation_checkpointing",
    "siglip_config",
    "validate_attention_implementation",
]

# ---- state dicts (safetensors + JSON, rename maps), parameter counting, FLOPs ----------------
from vla_core.counting import (
    ParameterCount,
    analytic_parameter_count,
    count_model_parameters,
    count_parameters,
)
from vla_core.fast_sampler import FastSampler, compile_sampler, with_dtype_policy
from vla_core.flops import (
    FlopBreakdown,
    MeasuredFlops,
    analytic_flops,
    measure_flops,
    measure_sample_actions_flops,
    profiler_matched_flops,
    published_flops_config,
)
from vla_core.fusion import fuse_projections
from vla_core.state_dict import (
    LAYOUTS,
    ConvertedStateDict,
    StateDictMismatchError,
    convert_state_dict,
    export_state_dict,
    load_config,
    load_pretrained,
    load_state_dict,
    rename_map,
    save_config,
    save_pretrained,
    transformers_pi0_config,
    unused_reference_keys,
)

__all__ += [
    "LAYOUTS",
    "ConvertedStateDict",
    "FlopBreakdown",
    "MeasuredFlops",
    "ParameterCount",
    "StateDictMismatchError",
    "analytic_flops",
    "analytic_parameter_count",
    "convert_state_dict",
    "count_model_parameters",
    "count_parameters",
    "export_state_dict",
    "load_config",
    "load_pretrained",
    "load_state_dict",
    "measure_flops",
    "measure_sample_actions_flops",
    "profiler_matched_flops",
    "published_flops_config",
    "rename_map",
    "save_config",
    "save_pretrained",
    "transformers_pi0_config",
    "unused_reference_keys",
]

__all__ += [
    "GEMMA3_EXPERT_PRESETS",
    "GEMMA3_PRESETS",
    "Gemma3Config",
    "Gemma3EngineConfig",
    "Gemma3JointEngine",
    "StreamBlock",
    "gemma3_config",
    "gemma3_expert_config",
    "gemma3_policy_config",
]

# deployment fast path: fixed-shape sampler (bf16, compile, CUDA graph), projection fusion
__all__ += ["FastSampler", "compile_sampler", "fuse_projections", "with_dtype_policy"]
