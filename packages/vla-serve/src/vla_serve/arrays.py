"""Checks that turn one decoded request value into a float32 array, naming the key on failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vla_serve.errors import RequestError


def require(observation: Mapping[str, Any], key: str) -> Any:
    if key not in observation:
        raise RequestError(
            f"observation key {key!r} is missing; got {sorted(map(str, observation))}"
        )
    return observation[key]


def float_array(key: str, value: Any, tail: tuple[int, ...]) -> np.ndarray:
    """`value` as float32 `[B, *tail]` (a missing batch axis is added); finite values only."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise RequestError(f"{key!r} must be a numeric numpy array, got {type(value).__name__}")
    array = value.astype(np.float32)  # a writable copy (wire arrays are read-only views)
    if array.ndim == len(tail):
        array = array[None]
    if array.ndim != len(tail) + 1 or tuple(array.shape[1:]) != tail:
        expected = ", ".join(map(str, tail))
        raise RequestError(
            f"{key!r} must have shape [{expected}] or [B, {expected}], got {list(value.shape)}"
        )
    if not np.isfinite(array).all():
        raise RequestError(f"{key!r} holds NaN or inf")
    return array


def integer(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise RequestError(f"{key!r} must be an integer, got {type(value).__name__}")
    if not low <= int(value) <= high:
        raise RequestError(f"{key!r} must be in [{low}, {high}], got {int(value)}")
    return int(value)
