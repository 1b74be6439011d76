"""The PushT policy trainer: Hydra config -> IMFPolicy -> checkpoints -> gym-pusht metrics."""

from vla_train.trainer.build import build_dataset, compose_config, dataset_root, policy_config
from vla_train.trainer.checkpoint import latest_checkpoint, load_weights, save_checkpoint
from vla_train.trainer.distributed import ShardedEpochSampler, init_distributed
from vla_train.trainer.ema import EMA
from vla_train.trainer.loop import CURVE_FILE, METRICS_FILE, run_evaluation, train
from vla_train.trainer.schedule import build_scheduler, cosine_with_warmup

__all__ = [
    "CURVE_FILE",
    "EMA",
    "METRICS_FILE",
    "ShardedEpochSampler",
    "build_dataset",
    "build_scheduler",
    "compose_config",
    "cosine_with_warmup",
    "dataset_root",
    "init_distributed",
    "latest_checkpoint",
    "load_weights",
    "policy_config",
    "run_evaluation",
    "save_checkpoint",
    "train",
]
