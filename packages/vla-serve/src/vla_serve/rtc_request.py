"""The optional `"rtc"` entry of a request: the previous chunk to inpaint onto (real-time chunking).

`observation["rtc"] = {"previous_action": [K, A] or [B, K, A] (unnormalised, entry 0 due at the new
chunk's first executed step), "inference_delay": d, "execution_horizon": s}`; see `vla_core.rtc`.
A plain openpi client never sends it and gets plain sampling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_serve.arrays import float_array, integer
from vla_serve.errors import RequestError

RTC_KEY = "rtc"


@dataclass(frozen=True)
class RTCRequest:
    previous_action: np.ndarray  # [B, K, A] float32
    inference_delay: int
    execution_horizon: int


def parse_rtc_request(
    observation: Mapping[str, Any], *, chunk_length: int, action_dim: int
) -> RTCRequest | None:
    """`None` when the request has no `"rtc"` entry; `RequestError` naming the key otherwise."""
    if RTC_KEY not in observation:
        return None
    entry = observation[RTC_KEY]
    if not isinstance(entry, Mapping):
        raise RequestError(f"{RTC_KEY!r} must be a map, got {type(entry).__name__}")
    for key in ("previous_action", "inference_delay", "execution_horizon"):
        if key not in entry:
            raise RequestError(f"'rtc.{key}' is missing; got {sorted(map(str, entry))}")
    raw = entry["previous_action"]
    if not isinstance(raw, np.ndarray) or raw.ndim not in (2, 3):
        raise RequestError(
            f"'rtc.previous_action' must be [K, {action_dim}] or [B, K, {action_dim}]"
        )
    previous = float_array("rtc.previous_action", raw, (raw.shape[-2], action_dim))
    horizon = integer("rtc.execution_horizon", entry["execution_horizon"], 0, chunk_length)
    delay = integer("rtc.inference_delay", entry["inference_delay"], 0, chunk_length - horizon)
    if previous.shape[1] < chunk_length - horizon:
        raise RequestError(
            f"'rtc.previous_action' has {previous.shape[1]} actions; with execution_horizon "
            f"{horizon} and a chunk of {chunk_length} it needs {chunk_length - horizon}"
        )
    return RTCRequest(previous, delay, horizon)
