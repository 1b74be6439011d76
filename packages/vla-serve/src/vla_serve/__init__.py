"""Serve vla-core / vla-imf policies over openpi's websocket protocol; real-time chunking client."""

from importlib.metadata import version as _version

from vla_serve.chunking import EXECUTION_MODES, ChunkingConfig, ChunkScheduler, ChunkStats
from vla_serve.errors import RequestError
from vla_serve.imf_policy import IMFServeConfig, IMFServedPolicy, load_imf_policy
from vla_serve.normalization import NormStats, load_norm_stats
from vla_serve.pi0_policy import PI0ServeConfig, PI0ServedPolicy, load_pi0
from vla_serve.rtc_request import RTCRequest, parse_rtc_request
from vla_serve.runner import AsyncChunkRunner
from vla_serve.server import HEALTH_PATH, PolicyServer, ServedPolicy, ServerConfig
from vla_serve.transport import PolicyClient, ServerError
from vla_serve.wire import WireFormatError, packb, unpackb

__version__ = _version("vla-serve")

__all__ = [
    "EXECUTION_MODES",
    "HEALTH_PATH",
    "AsyncChunkRunner",
    "ChunkScheduler",
    "ChunkStats",
    "ChunkingConfig",
    "IMFServeConfig",
    "IMFServedPolicy",
    "NormStats",
    "PI0ServeConfig",
    "PI0ServedPolicy",
    "PolicyClient",
    "PolicyServer",
    "RTCRequest",
    "RequestError",
    "ServedPolicy",
    "ServerConfig",
    "ServerError",
    "WireFormatError",
    "__version__",
    "load_imf_policy",
    "load_norm_stats",
    "load_pi0",
    "packb",
    "parse_rtc_request",
    "unpackb",
]
