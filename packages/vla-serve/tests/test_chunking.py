"""The chunk scheduler's timeline (requests every s steps, stale actions skipped, seams measured,
RTC payload aligned to the request step) and the async runner's measured delay in control steps."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vla_serve.chunking import ChunkingConfig, ChunkScheduler
from vla_serve.runner import AsyncChunkRunner


def _chunk(start: float, length: int = 6) -> np.ndarray:
    """Actions whose value is their absolute control step (+ an offset per chunk)."""
    return (start + np.arange(length, dtype=np.float32))[:, None].repeat(2, axis=1)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        ChunkingConfig("eager", 3, 6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="execution_horizon must be in"):
        ChunkingConfig("rtc", 7, 6)


def test_naive_switch_skips_the_stale_actions_and_measures_the_seam() -> None:
    scheduler = ChunkScheduler(ChunkingConfig("naive", execution_horizon=3, chunk_length=6))
    assert scheduler.wants_request()
    assert scheduler.request(step=0, delay_estimate=0) is None
    scheduler.receive(_chunk(0), step=0)
    executed = [scheduler.next_action()[0] for _ in range(3)]  # steps 0, 1, 2
    assert executed == [0, 1, 2] and scheduler.wants_request()
    assert scheduler.request(step=3, delay_estimate=2) is None  # naive: no rtc payload
    executed += [scheduler.next_action()[0] for _ in range(2)]  # steps 3, 4 from the old chunk
    scheduler.receive(_chunk(103), step=5)  # delay 2: new actions 0, 1 are stale
    assert scheduler.stats.delays == [0, 2]
    assert scheduler.next_action()[0] == 105
    # Steady state: the next request goes out when the new chunk's action s = 3 is due (step 6),
    # s steps after the previous request, not after s more executed actions.
    assert scheduler.wants_request()
    assert scheduler.stats.seams == pytest.approx([np.hypot(101, 101)])  # 105 vs the last 4


def test_rtc_payload_is_the_unexecuted_rest_of_the_chunk() -> None:
    scheduler = ChunkScheduler(ChunkingConfig("rtc", execution_horizon=3, chunk_length=6))
    scheduler.request(step=0, delay_estimate=0)
    scheduler.receive(_chunk(0), step=0)
    for _ in range(3):
        scheduler.next_action()
    payload = scheduler.request(step=3, delay_estimate=2)
    assert payload is not None
    np.testing.assert_array_equal(payload["previous_action"], _chunk(0)[3:])  # steps 3, 4, 5
    assert payload["inference_delay"] == 2
    assert payload["execution_horizon"] == 3  # overlap = the 3 leftover actions
    assert not scheduler.wants_request()  # one request in flight at a time


def test_starved_steps_repeat_the_last_action() -> None:
    scheduler = ChunkScheduler(ChunkingConfig("naive", execution_horizon=6, chunk_length=6))
    scheduler.request(step=0, delay_estimate=0)
    scheduler.receive(_chunk(0), step=0)
    actions = [scheduler.next_action()[0] for _ in range(8)]
    assert actions == [0, 1, 2, 3, 4, 5, 5, 5] and scheduler.stats.starved == 2


def test_runner_measures_the_delay_in_control_steps() -> None:
    """A fake server that answers only when the test lets it: the reply to the request sent at
    step 3 is released after step 5 ran, so it is used from step 6 on: delay 3."""
    release = threading.Event()
    requests: list[dict] = []

    def infer(request: dict) -> dict:
        requests.append(request)
        if len(requests) > 1:
            assert release.wait(timeout=30)
        step = request["step"]
        return {"action_chunk": _chunk(1000 * len(requests) + step)}

    runner = AsyncChunkRunner(
        infer, ChunkingConfig("rtc", execution_horizon=3, chunk_length=6), initial_delay=2
    )
    actions = []
    for step in range(6):
        actions.append(runner.step({"step": step})[0])
    assert actions == [1000, 1001, 1002, 1003, 1004, 1005]
    assert requests[1]["step"] == 3 and requests[1]["rtc"]["inference_delay"] == 2
    release.set()
    runner._done.wait(timeout=30)
    action = runner.step({"step": 6})[0]
    assert runner.scheduler.stats.delays == [0, 3]
    assert action == 2003 + 3  # the new chunk's action 3 (issued at step 3) is due at step 6
    assert runner.delay_estimate == 3
