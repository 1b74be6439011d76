"""LightVLA differentiable visual-token pruning for VLA policies (torch only)."""

from importlib.metadata import version as _version

from vla_prune.baselines import GridPoolPruner, RandomKPruner
from vla_prune.config import PrunerConfig
from vla_prune.pruner import ImageTokenPruner, TokenPruner
from vla_prune.schedule import NoiseSchedule, linear_decay
from vla_prune.scoring import lightvla_scores, rms_norm
from vla_prune.stats import PruneStats

__version__ = _version("vla-prune")

__all__ = [
    "GridPoolPruner",
    "ImageTokenPruner",
    "NoiseSchedule",
    "PruneStats",
    "PrunerConfig",
    "RandomKPruner",
    "TokenPruner",
    "__version__",
    "lightvla_scores",
    "linear_decay",
    "rms_norm",
]
