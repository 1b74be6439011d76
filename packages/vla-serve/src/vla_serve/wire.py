"""The wire format of openpi's policy protocol: msgpack, numpy arrays as tagged maps.

Compatible with `openpi_client.msgpack_numpy` (openpi-client 0.1.2), learned from its source:
an array travels as the map `{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": <dtype.str>,
b"shape": <list>}`, a numpy scalar as `{b"__npgeneric__": True, b"data": <item>, b"dtype": ...}`.
Decoding here is stricter than openpi's: only numeric / bool dtypes are accepted (never object,
void or complex: nothing on the wire can make the server build Python objects) and the byte count
must match the shape, so a malformed frame becomes a `WireFormatError` that names the problem.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

_ARRAY_TAG = b"__ndarray__"
_SCALAR_TAG = b"__npgeneric__"
# bool, signed / unsigned ints, floats: everything a policy exchanges.
_ALLOWED_KINDS = frozenset("biuf")


class WireFormatError(ValueError):
    """A frame that is not valid msgpack, or an array map that is inconsistent."""


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind not in _ALLOWED_KINDS:
        raise TypeError(f"cannot send numpy dtype {obj.dtype} (only bool / int / float)")
    if isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        return {
            _ARRAY_TAG: True,
            b"data": array.tobytes(),
            b"dtype": array.dtype.str,
            b"shape": list(array.shape),
        }
    if isinstance(obj, np.generic):
        return {_SCALAR_TAG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__} over the wire")


def _dtype(tagged: dict[Any, Any]) -> np.dtype[Any]:
    raw = tagged.get(b"dtype")
    if not isinstance(raw, str | bytes):
        raise WireFormatError(f"array dtype must be a string, got {raw!r}")
    try:
        dtype = np.dtype(raw.decode() if isinstance(raw, bytes) else raw)
    except TypeError as e:
        raise WireFormatError(f"unknown array dtype {raw!r}") from e
    if dtype.kind not in _ALLOWED_KINDS:
        raise WireFormatError(f"array dtype {dtype} is not allowed (only bool / int / float)")
    return dtype


def _decode_hook(obj: dict[Any, Any]) -> Any:
    if _ARRAY_TAG in obj:
        dtype = _dtype(obj)
        data, shape = obj.get(b"data"), obj.get(b"shape")
        if not isinstance(data, bytes):
            raise WireFormatError("array data must be bytes")
        if not isinstance(shape, list | tuple) or not all(
            isinstance(n, int) and n >= 0 for n in shape
        ):
            raise WireFormatError(f"array shape must be a list of ints >= 0, got {shape!r}")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise WireFormatError(
                f"array of shape {list(shape)} and dtype {dtype} needs {expected} bytes, "
                f"got {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if _SCALAR_TAG in obj:
        return _dtype(obj).type(obj.get(b"data"))
    return obj


def packb(obj: Any) -> bytes:
    """Encode a (nested) dict of numpy arrays / scalars / plain values."""
    return msgpack.packb(obj, default=_encode_default)


def unpackb(frame: bytes) -> Any:
    """Decode one frame; raises `WireFormatError` on anything malformed."""
    try:
        return msgpack.unpackb(frame, object_hook=_decode_hook, strict_map_key=False)
    except WireFormatError:
        raise
    except (msgpack.UnpackException, ValueError, TypeError) as e:
        raise WireFormatError(f"frame is not valid msgpack: {e}") from e
