"""VLA fine-tuning of pi0 / pi0.5 (vla-core) on LeRobot v3 datasets, optionally with LightVLA
token pruning (vla-prune), in one process, DDP or FSDP2."""

from vla_train.vla.data import Batch, Normalizer, VLADataConfig, VLADataset, collate
from vla_train.vla.finetune import (
    FinetuneConfig,
    OptimConfig,
    finetune,
    finetune_local_processes,
    global_batch_indices,
    learning_rate,
)
from vla_train.vla.lora import LoRAConfig, LoRALinear, apply_lora, lora_modules, merge_lora
from vla_train.vla.parallel import (
    STRATEGIES,
    export_policy,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    wrap_model,
)
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
    "STRATEGIES",
    "Batch",
    "FinetuneConfig",
    "LoRAConfig",
    "LoRALinear",
    "Normalizer",
    "OptimConfig",
    "PolicyConfig",
    "PruningConfig",
    "TinyTokenizer",
    "VLADataConfig",
    "VLADataset",
    "apply_freezing",
    "apply_lora",
    "build_policy",
    "collate",
    "export_policy",
    "finetune",
    "finetune_local_processes",
    "freeze_unreachable",
    "global_batch_indices",
    "latest_checkpoint",
    "learning_rate",
    "load_checkpoint",
    "load_tokenizer",
    "lora_modules",
    "merge_lora",
    "optimizer_param_groups",
    "save_checkpoint",
    "tokenize_prompts",
    "trainable_parameter_count",
    "wrap_model",
    "write_synthetic_dataset",
]
