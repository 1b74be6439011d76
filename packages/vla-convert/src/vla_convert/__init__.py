"""openpi JAX/Flax checkpoints to PyTorch safetensors with exact LoRA merge."""

from importlib.metadata import version as _version

from vla_convert.checkpoint import LeafInfo, OpenpiCheckpoint
from vla_convert.convert import ConversionSummary, convert_openpi
from vla_convert.dims import GemmaDims, OpenpiDims, VisionDims, expected_leaves, infer_dims
from vla_convert.errors import (
    CheckpointReadError,
    ConversionError,
    LeafShapeError,
    LoraConfigError,
    MissingLeafError,
    ModelMismatchError,
    NonFiniteError,
    OutputPathError,
    UnknownLeafError,
    VerificationError,
)
from vla_convert.lora import (
    OPENPI_LORA_VARIANTS,
    LoraSpec,
    delta_equation,
    lora_equations,
    merge_einsum_lora,
    merge_ffn_lora,
)
from vla_convert.lora_config import (
    OPENPI_GEMMA_VARIANTS,
    LoraDeclaration,
    TowerLora,
    resolve_tower_loras,
)
from vla_convert.mapping import build_plan, map_params, plan_targets

__version__ = _version("vla-convert")

__all__ = [
    "OPENPI_GEMMA_VARIANTS",
    "OPENPI_LORA_VARIANTS",
    "CheckpointReadError",
    "ConversionError",
    "ConversionSummary",
    "GemmaDims",
    "LeafInfo",
    "LeafShapeError",
    "LoraConfigError",
    "LoraDeclaration",
    "LoraSpec",
    "MissingLeafError",
    "ModelMismatchError",
    "NonFiniteError",
    "OpenpiCheckpoint",
    "OpenpiDims",
    "OutputPathError",
    "TowerLora",
    "UnknownLeafError",
    "VerificationError",
    "VisionDims",
    "__version__",
    "build_plan",
    "convert_openpi",
    "delta_equation",
    "expected_leaves",
    "infer_dims",
    "lora_equations",
    "map_params",
    "merge_einsum_lora",
    "merge_ffn_lora",
    "plan_targets",
    "resolve_tower_loras",
]
