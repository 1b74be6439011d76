"""The async client loop: keep a queue of actions, request the next chunk early, measure the real
inference delay in control steps, switch chunks plainly or with real-time chunking.

`runner.step(observation)` is called once per control tick and returns the action to apply; the
request runs on a worker thread, so the control loop never waits for the network or the model
(except for the very first chunk, and in "sync" mode, where waiting is the point).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from vla_serve.chunking import ChunkingConfig, ChunkScheduler

InferFn = Callable[[dict[str, Any]], dict[str, Any]]


def reply_chunk(reply: dict[str, Any]) -> np.ndarray:
    """The executable chunk of a reply: `action_chunk` (vla-imf) or `actions` (pi0), `[L, A]`."""
    chunk = reply.get("action_chunk", reply.get("actions"))
    if not isinstance(chunk, np.ndarray) or chunk.ndim != 2:
        raise ValueError("reply has no [L, A] 'action_chunk' / 'actions' array")
    return chunk


class AsyncChunkRunner:
    """`delay_window`: the RTC delay sent with a request is the max of the last `delay_window`
    measured delays (`initial_delay` before any was measured)."""

    def __init__(
        self,
        infer: InferFn,
        config: ChunkingConfig,
        *,
        initial_delay: int = 0,
        delay_window: int = 5,
    ) -> None:
        if initial_delay < 0 or delay_window < 1:
            raise ValueError(
                f"need initial_delay >= 0 and delay_window >= 1, got {initial_delay}, {delay_window}"
            )
        self.infer = infer
        self.scheduler = ChunkScheduler(config)
        self.initial_delay = initial_delay
        self._recent: deque[int] = deque(maxlen=delay_window)
        self._step = 0
        self._reply: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self.server_timing: list[dict[str, float]] = []

    @property
    def delay_estimate(self) -> int:
        return max(self._recent) if self._recent else self.initial_delay

    def _work(self, request: dict[str, Any]) -> None:
        try:
            self._reply = self.infer(request)
        except BaseException as e:  # surfaced on the control thread
            self._error = e
        finally:
            self._done.set()

    def _collect(self, *, blocking: bool) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        reply, self._reply = self._reply, None
        self._done.clear()
        assert reply is not None
        if "server_timing" in reply:
            self.server_timing.append(dict(reply["server_timing"]))
        self.scheduler.receive(reply_chunk(reply), self._step)
        if not blocking:  # a reply the world waited for says nothing about the delay
            self._recent.append(self.scheduler.stats.delays[-1])

    def step(self, observation: dict[str, Any]) -> np.ndarray:
        scheduler = self.scheduler
        if scheduler.pending_since is not None and self._done.is_set():
            self._collect(blocking=False)
        if scheduler.wants_request():
            rtc = scheduler.request(self._step, self.delay_estimate)
            request = dict(observation) if rtc is None else {**observation, "rtc": rtc}
            self._done.clear()
            threading.Thread(target=self._work, args=(request,), daemon=True).start()
            if scheduler.chunk is None or scheduler.config.mode == "sync":
                self._done.wait()
                self._collect(blocking=True)
        action = scheduler.next_action()
        self._step += 1
        return action
