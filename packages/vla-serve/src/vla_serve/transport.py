"""A small synchronous client for the openpi protocol (what `vla-serve client` uses; the same
wire as `openpi_client.WebsocketClientPolicy`, without its numpy<2 pin)."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from vla_serve.wire import packb, unpackb


class ServerError(RuntimeError):
    """The server answered a request with an error message (a text frame)."""


class PolicyClient:
    """`PolicyClient("ws://127.0.0.1:8000").infer(obs)`; reconnects once if the link dropped."""

    def __init__(self, uri: str, *, connect_timeout_s: float = 10.0) -> None:
        self.uri = uri if uri.startswith("ws") else f"ws://{uri}"
        self.connect_timeout_s = connect_timeout_s
        self._connection: ClientConnection | None = None
        self._stack = ExitStack()
        self.metadata: dict[str, Any] = {}
        self._connect()

    def _connect(self) -> None:
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                self._connection = self._stack.enter_context(
                    connect(
                        self.uri,
                        compression=None,
                        max_size=None,
                        open_timeout=self.connect_timeout_s,
                    )
                )
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        greeting = self._connection.recv()
        if not isinstance(greeting, bytes):
            raise ServerError(f"expected the metadata frame, got text: {greeting}")
        self.metadata = unpackb(greeting)

    def infer(self, observation: dict[str, Any]) -> dict[str, Any]:
        frame = packb(observation)
        for attempt in range(2):
            assert self._connection is not None
            try:
                self._connection.send(frame)
                reply = self._connection.recv()
                break
            except ConnectionClosed:
                if attempt:
                    raise
                self._connect()
        if isinstance(reply, str):
            raise ServerError(reply)
        return unpackb(reply)

    def close(self) -> None:
        self._stack.close()  # closes every connection opened (reconnects included)
        self._connection = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
