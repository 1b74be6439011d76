"""Stream tensors into one safetensors file with bounded memory, inside an atomic output dir.

safetensors puts a JSON header (every name, dtype, shape and byte range) before the data. The plan
knows every target shape up front, so the header is written first and each tensor is then written
at its offset as it is produced: only one tensor is ever held in memory. The file is checked to be
complete on close and re-opened with the `safetensors` library by the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

_DTYPES: dict[torch.dtype, tuple[str, int]] = {
    torch.float32: ("F32", 4),
    torch.bfloat16: ("BF16", 2),
    torch.float16: ("F16", 2),
}


class StreamingSafetensorsWriter:
    """Write tensors named in advance (name -> shape) in any order, each exactly once."""

    chunk_bytes = 64 << 20  # casting granularity

    def __init__(
        self,
        path: Path,
        shapes: dict[str, tuple[int, ...]],
        dtype: torch.dtype,
        metadata: dict[str, str] | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"unsupported output dtype {dtype}; expected one of {list(_DTYPES)}")
        code, itemsize = _DTYPES[dtype]
        self.path, self.dtype, self._itemsize = path, dtype, itemsize
        self._shapes = dict(shapes)
        self._offsets: dict[str, int] = {}
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name, shape in shapes.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
            header[name] = {
                "dtype": code,
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self._offsets[name] = offset
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data section 8-byte aligned, as safetensors does
        self._data_start = 8 + len(blob)
        self.data_bytes = offset
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pwrite(len(blob).to_bytes(8, "little") + blob, 0)
        os.ftruncate(self._fd, self._data_start + offset)
        self._written: set[str] = set()

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Cast `tensor` to the file dtype (in row chunks: no full-size cast copy) and write it at
        its reserved byte range."""
        if name not in self._shapes:
            raise KeyError(f"{name} is not in the planned tensor list")
        if name in self._written:
            raise KeyError(f"{name} written twice")
        if tuple(tensor.shape) != self._shapes[name]:
            raise ValueError(
                f"{name}: produced shape {tuple(tensor.shape)}, planned {self._shapes[name]}"
            )
        rows = tensor.reshape(1, -1) if tensor.ndim < 2 else tensor
        row_bytes = (rows[0].numel() if rows.shape[0] else 0) * self._itemsize
        step = max(1, self.chunk_bytes // max(row_bytes, 1))
        offset = self._data_start + self._offsets[name]
        for start in range(0, rows.shape[0], step):
            piece = rows[start : start + step].to(self.dtype).contiguous()
            self._pwrite(piece.view(torch.uint8).numpy().data, offset + start * row_bytes)
        self._written.add(name)

    def close(self) -> None:
        """Flush to disk; raise naming the tensors never written (the file would hold zeros)."""
        try:
            missing = [n for n in self._shapes if n not in self._written]
            if missing:
                raise ValueError(f"{len(missing)} planned tensor(s) never written: {missing[:10]}")
            os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside `out_dir`; rename it into place only if the body succeeds."""
    out = Path(out_dir).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"output {out} already exists (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
