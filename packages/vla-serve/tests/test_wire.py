"""Pins the wire format to openpi-client's msgpack_numpy, both directions, and the strict decoder."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy

from vla_serve.wire import WireFormatError, packb, unpackb


def _sample() -> dict:
    return {
        "state": np.arange(6, dtype=np.float32).reshape(2, 3),
        "image": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        "mask": np.array([True, False]),
        "step": np.int64(7),
        "prompt": "push the T",
        "nested": {"x": np.float32(0.5)},  # float64 is a Python float: sent as one
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_same(a[key], b[key])
        elif isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key] and type(a[key]) is type(b[key])


def test_openpi_client_decodes_our_frames() -> None:
    _assert_same(msgpack_numpy.unpackb(packb(_sample())), _sample())


def test_we_decode_openpi_client_frames() -> None:
    _assert_same(unpackb(msgpack_numpy.packb(_sample())), _sample())


def test_rejects_object_dtype_both_ways() -> None:
    with pytest.raises(TypeError, match="dtype object"):
        packb({"x": np.array([1, "a"], dtype=object)})
    frame = msgpack.packb(
        {"x": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}}
    )
    with pytest.raises(WireFormatError, match="not allowed"):
        unpackb(frame)


def test_rejects_byte_count_that_does_not_match_shape() -> None:
    frame = msgpack.packb(
        {"x": {b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4", b"shape": [2]}}
    )
    with pytest.raises(WireFormatError, match="needs 8 bytes, got 7"):
        unpackb(frame)


def test_rejects_garbage() -> None:
    with pytest.raises(WireFormatError, match="not valid msgpack"):
        unpackb(b"\xc1\xc1\xc1")
