"""A websocket policy server speaking openpi's protocol, so the unmodified `openpi-client` works.

Protocol (openpi `src/openpi/serving/websocket_policy_server.py`, openpi-client 0.1.2): on connect
the server sends the policy metadata (one msgpack frame); then every binary frame from the client
is an observation and is answered by one binary frame with the action dict, to which the server adds
`server_timing` (`infer_ms`, and `prev_total_ms`: the previous request's receive-to-sent time).
An error is answered by a *text* frame (openpi-client raises it as `RuntimeError`); unlike openpi,
the connection stays open, so a client may correct its request, and other clients never notice.
`GET /healthz` on the same port answers 200 "OK" (openpi's health check).

One model, many clients: inference runs in a worker thread, one request at a time (a lock), so
the event loop keeps accepting connections and answering health checks while the model works.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from vla_serve.errors import RequestError
from vla_serve.wire import WireFormatError, packb, unpackb

logger = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"


class ServedPolicy(Protocol):
    def metadata(self) -> dict[str, Any]: ...

    def infer(self, observation: Mapping[str, Any]) -> dict[str, np.ndarray]: ...

    def warmup(self) -> None:
        """Run plain and RTC inference once on dummy input (lazy imports, allocator warm-up)."""
        ...


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # openpi's default; 0 = any free port
    max_message_bytes: int = 64 * 2**20
    # The first RTC request would otherwise pay torch's lazy autograd imports (seconds on a busy
    # CPU) while a robot waits on it.
    warmup: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")


def _health_check(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == HEALTH_PATH:
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None


class PolicyServer:
    """`PolicyServer(policy).serve_forever()`, or `start()` / `stop()` around a background thread."""

    def __init__(self, policy: ServedPolicy, config: ServerConfig = ServerConfig()) -> None:
        self.policy = policy
        self.config = config
        self._metadata = packb(policy.metadata())
        self._infer_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ one connection
    async def _handle(self, websocket: ServerConnection) -> None:
        logger.info("connection from %s", websocket.remote_address)
        await websocket.send(self._metadata)
        previous_total_ms: float | None = None
        async for frame in websocket:
            received = time.perf_counter()
            reply = await self._answer(frame, previous_total_ms)
            try:
                await websocket.send(reply)
            except ConnectionClosed:
                break
            if isinstance(reply, bytes):
                previous_total_ms = (time.perf_counter() - received) * 1000

    async def _answer(self, frame: str | bytes, previous_total_ms: float | None) -> str | bytes:
        try:
            if isinstance(frame, str):
                raise WireFormatError("expected a binary msgpack frame, got text")
            observation = unpackb(frame)
            if not isinstance(observation, dict):
                raise WireFormatError(f"a request must be a map, got {type(observation).__name__}")
            tic = time.perf_counter()
            action = await asyncio.to_thread(self._infer, observation)
            timing = {"infer_ms": (time.perf_counter() - tic) * 1000}
            if previous_total_ms is not None:
                timing["prev_total_ms"] = previous_total_ms
            return packb({**action, "server_timing": timing})
        except (WireFormatError, RequestError, KeyError, ValueError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            return f"{type(e).__name__}: {message}"
        except Exception as e:  # never let one request take the server down
            logger.exception("inference failed")
            return f"{type(e).__name__}: {e}"

    def _warmup(self) -> None:
        with self._infer_lock:
            self.policy.warmup()

    def _infer(self, observation: Mapping[str, Any]) -> dict[str, np.ndarray]:
        with self._infer_lock:
            return self.policy.infer(observation)

    # ------------------------------------------------------------------ lifecycle
    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (or the task is cancelled); then close every connection
        (clients see a normal close) after answering the request in flight."""
        self._loop = asyncio.get_running_loop()
        if self.config.warmup:
            await asyncio.to_thread(self._warmup)
        stop = stop or asyncio.Event()
        self._stop = stop
        async with serve(
            self._handle,
            self.config.host,
            self.config.port,
            compression=None,
            max_size=self.config.max_message_bytes,
            process_request=_health_check,
        ) as server:
            self._server = server
            self.port = next(iter(server.sockets)).getsockname()[1]
            logger.info("serving on ws://%s:%d", self.config.host, self.port)
            self._ready.set()
            await stop.wait()
            server.close(close_connections=True)
            await server.wait_closed()

    def serve_forever(self) -> None:
        """Blocking; SIGINT / SIGTERM shut down gracefully."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await self.serve(stop)

        asyncio.run(main())

    def start(self, timeout_s: float = 30.0) -> int:
        """Serve from a daemon thread; returns the bound port."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self.serve()), daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"server did not start within {timeout_s} s")
        assert self.port is not None
        return self.port

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and self._ready.is_set():
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._ready.clear()
