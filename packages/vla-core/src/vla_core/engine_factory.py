"""The one engine factory: an engine config -> its engine module, chosen by `config.family`."""

from __future__ import annotations

from vla_core.engine import JointEngine
from vla_core.engine_config import ENGINE_FAMILIES, JointEngineConfig
from vla_core.gemma3 import Gemma3JointEngine

__all__ = ["ENGINE_CLASSES", "build_engine"]

ENGINE_CLASSES: dict[str, type[JointEngine]] = {"gemma": JointEngine, "gemma3": Gemma3JointEngine}


def build_engine(config: JointEngineConfig, *, expert_cond_dim: int | None = None) -> JointEngine:
    """`JointEngine` for `family="gemma"`, `Gemma3JointEngine` for `family="gemma3"`;
    `expert_cond_dim` turns the expert's norms into AdaRMS (pi0.5)."""
    if config.family not in ENGINE_CLASSES:
        raise ValueError(f"engine family must be one of {ENGINE_FAMILIES}, got {config.family!r}")
    return ENGINE_CLASSES[config.family](config, expert_cond_dim=expert_cond_dim)  # type: ignore[arg-type]
