"""VLA fine-tuning of pi0 / pi0.5 (vla-core) on LeRobot v3 datasets, optionally with LightVLA
token pruning (vla-prune): the policy, data, LoRA and tokenizer pieces that the
`vla_finetune` recipe (vla_train.recipes.vla_finetune) trains with the one loop."""

from vla_train.vla.data import Batch, Normalizer, VLADataConfig, VLADataset, collate
from vla_train.vla.lora import LoRAConfig, LoRALinear, apply_lora, lora_modules, merge_lora
from vla_train.vla.policy import (
    FREEZE_MODES,
    PolicyConfig,
    PruningConfig,
    apply_freezing,
    build_policy,
    freeze_unreachable,
    optimizer_param_groups,
    trainable_parameter_count,
)
from vla_train.vla.synthetic import write_synthetic_dataset
from vla_train.vla.tokenizer import TinyTokenizer, load_tokenizer, tokenize_prompts

__all__ = [
    "FREEZE_MODES",
    "Batch",
    "LoRAConfig",
    "LoRALinear",
    "Normalizer",
    "PolicyConfig",
    "PruningConfig",
    "TinyTokenizer",
    "VLADataConfig",
    "VLADataset",
    "apply_freezing",
    "apply_lora",
    "build_policy",
    "collate",
    "freeze_unreachable",
    "load_tokenizer",
    "lora_modules",
    "merge_lora",
    "optimizer_param_groups",
    "tokenize_prompts",
    "trainable_parameter_count",
    "write_synthetic_dataset",
]
