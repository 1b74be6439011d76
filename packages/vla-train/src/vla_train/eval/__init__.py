"""Closed-loop evaluation of PushT policies in gym-pusht."""

from vla_train.eval.rollout import (
    SUCCESS_COVERAGE,
    EvalResult,
    action_latency_ms,
    env_obs_to_frame,
    evaluate,
    first_observation,
    wilson_interval,
)

__all__ = [
    "SUCCESS_COVERAGE",
    "EvalResult",
    "action_latency_ms",
    "env_obs_to_frame",
    "evaluate",
    "first_observation",
    "wilson_interval",
]
