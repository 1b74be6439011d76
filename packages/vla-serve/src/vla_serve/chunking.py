"""Action-chunk execution on a control-step clock: synchronous, naive async, or real-time chunking.

The scheduler only counts control steps; who runs inference and when its reply arrives is the
caller's business (the wall-clock runner in `vla_serve.runner`, or a simulated delay in the
benchmark), so the same logic is exercised in both.

Timeline, with chunk length L (actions from the observation's step on) and execution horizon s:
a chunk's action i is due i steps after the observation it answers; a request is sent with the
observation of the step the current chunk's action s is due at (so requests go out every s steps,
as in the RTC paper); its reply arrives d steps later (d = the measured inference delay in control
steps), so the new chunk's actions 0 … d−1 are stale and execution resumes at its action d. The
old chunk must last until then: s + d <= L, else steps are "starved" (the last action repeats).
- "sync": the world waits for inference (d = 0 by construction): the reference.
- "naive": the new chunk simply replaces the old one at k + d (a jump at the seam).
- "rtc": the request carries the old chunk's unexecuted actions, d and s, and the server inpaints
  the new chunk onto them (`vla_core.rtc`), so the seam is continuous.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

ExecutionMode = Literal["sync", "naive", "rtc"]
EXECUTION_MODES: tuple[str, ...] = get_args(ExecutionMode)


@dataclass(frozen=True)
class ChunkingConfig:
    """`execution_horizon`: s, the chunk index at which the next request is sent (the number of
    actions a chunk contributes in steady state).
    `chunk_length`: actions per chunk counted from the observation's step (L)."""

    mode: ExecutionMode
    execution_horizon: int
    chunk_length: int

    def __post_init__(self) -> None:
        if self.mode not in EXECUTION_MODES:
            raise ValueError(f"mode must be one of {EXECUTION_MODES}, got {self.mode!r}")
        if not 1 <= self.execution_horizon <= self.chunk_length:
            raise ValueError(
                f"execution_horizon must be in [1, chunk_length={self.chunk_length}], "
                f"got {self.execution_horizon}"
            )


@dataclass
class ChunkStats:
    """Seams: |Δa| (L2) between the last action of the old chunk and the first of the new one;
    inner: |Δa| between consecutive actions of one chunk; delays: measured d per reply;
    starved: steps that repeated the last action because no chunk had actions left;
    requests: requests sent."""

    seams: list[float] = field(default_factory=list)
    inner: list[float] = field(default_factory=list)
    delays: list[int] = field(default_factory=list)
    starved: int = 0
    requests: int = 0


class ChunkScheduler:
    def __init__(self, config: ChunkingConfig) -> None:
        self.config = config
        self.chunk: np.ndarray | None = None  # [L, A]
        self.cursor = 0  # index in `chunk` of the next action to execute
        self.executed_from_chunk = 0
        self.pending_since: int | None = None  # step the in-flight request was sent at
        self.last_action: np.ndarray | None = None
        self.stats = ChunkStats()

    @property
    def remaining(self) -> int:
        return 0 if self.chunk is None else len(self.chunk) - self.cursor

    def wants_request(self) -> bool:
        """True when a request should be sent with the current step's observation."""
        if self.pending_since is not None:
            return False
        return self.chunk is None or self.cursor >= self.config.execution_horizon

    def request(self, step: int, delay_estimate: int) -> dict[str, Any] | None:
        """Mark a request as sent at `step`; returns the `"rtc"` entry to send with it (rtc mode
        with a current chunk), else None."""
        self.pending_since = step
        self.stats.requests += 1
        if self.config.mode != "rtc" or self.chunk is None or self.remaining == 0:
            return None
        previous = self.chunk[self.cursor :].astype(np.float32)  # previous[0] is due at `step`
        length = self.config.chunk_length
        overlap = min(len(previous), length)
        return {
            "previous_action": previous,
            "inference_delay": int(min(max(delay_estimate, 0), overlap)),
            "execution_horizon": int(length - overlap),
        }

    def receive(self, chunk: np.ndarray, step: int) -> None:
        """The reply to the pending request arrived at `step`."""
        if self.pending_since is None:
            raise RuntimeError("receive() without a pending request")
        if chunk.ndim != 2 or len(chunk) != self.config.chunk_length:
            raise ValueError(
                f"chunk must be [{self.config.chunk_length}, A], got {list(chunk.shape)}"
            )
        delay = step - self.pending_since
        self.stats.delays.append(delay)
        self.pending_since = None
        if delay >= len(chunk):
            return  # entirely stale: keep executing what we have
        self.chunk, self.cursor, self.executed_from_chunk = chunk, delay, 0
        if self.last_action is not None:
            self.stats.seams.append(float(np.linalg.norm(chunk[delay] - self.last_action)))

    def next_action(self) -> np.ndarray:
        """The action for the current step (the last one again when starved)."""
        if self.chunk is None:
            raise RuntimeError("no chunk yet: the first request must be answered first")
        if self.cursor >= len(self.chunk):
            self.stats.starved += 1
            assert self.last_action is not None
            return self.last_action
        action = self.chunk[self.cursor]
        if self.last_action is not None and self.executed_from_chunk > 0:
            self.stats.inner.append(float(np.linalg.norm(action - self.last_action)))
        self.cursor += 1
        self.executed_from_chunk += 1
        self.last_action = action
        return action
