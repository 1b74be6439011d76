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
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from vla_convert.errors import OutputPathError

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
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._pwrite(len(blob).to_bytes(8, "little") + blob, 0)
        os.ftruncate(self._fd, self._data_start + offset)
        self._written: set[str] = set()
        self._staging: torch.Tensor | None = None

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Cast `tensor` (any strides) to the file dtype in row chunks through a reused staging
        buffer (no full-size copy) and write it at its reserved byte range."""
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
            piece = rows[start : start + step]
            if piece.dtype != self.dtype or not piece.is_contiguous():
                piece = self._stage(piece)
            self._pwrite(piece.view(torch.uint8).numpy().data, offset + start * row_bytes)
        self._written.add(name)

    def _stage(self, piece: torch.Tensor) -> torch.Tensor:
        """Cast (and transpose, for strided views) into one reused buffer: a single pass, and no
        fresh 64 MB allocation (page faults) per chunk."""
        n = piece.numel()
        if self._staging is None or self._staging.numel() < n:
            self._staging = torch.empty(
                max(n, self.chunk_bytes // self._itemsize), dtype=self.dtype
            )
        staged = self._staging[:n].view(piece.shape)
        staged.copy_(piece)
        return staged

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


PARTIAL = "partial"


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_location(out_dir: str | Path, sources: Iterable[str | Path]) -> Path:
    """Refuse an output that is, lies inside, or contains a source dir (symlinks resolved): with
    `overwrite` it would be deleted, and a source inside the output would be moved away."""
    out = Path(out_dir).resolve()
    for source in sources:
        src = Path(source).resolve()
        if out == src:
            relation = "is"
        elif src in out.parents:
            relation = "lies inside"
        elif out in src.parents:
            relation = "contains"
        else:
            continue
        raise OutputPathError(
            f"output {out} {relation} the source checkpoint {src}: refusing before touching "
            "anything (an overwrite would delete the source); choose an --out outside it"
        )
    return out


def _partial_prefix(out: Path) -> str:
    return f".{out.name}.{PARTIAL}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove `.<name>.partial-<host>-<pid>-*` / `.<name>.old-*` siblings left by a killed run
    (SIGKILL, power loss): partial dirs of this host whose process is gone, and unparseable ones of
    the same prefix (left by older versions); an `.old-*` dir still holding the previous output
    while `out` is missing (killed between the two renames) is renamed back first."""
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    host = socket.gethostname()
    for sibling in out.parent.iterdir():
        name = sibling.name
        if not sibling.is_dir() or sibling.is_symlink():
            continue
        if name.startswith(_partial_prefix(out)):
            fields = name[len(_partial_prefix(out)) :].rsplit("-", 2)
            owned = len(fields) == 3 and fields[1].isdigit()
            if owned and (fields[0] != host or _alive(int(fields[1]))):
                continue  # another machine's, or a run still in progress
        elif name.startswith(f".{out.name}.old-"):
            previous = sibling / out.name
            if previous.exists() and not out.exists():
                os.replace(previous, out)  # killed mid-swap: put the previous output back
        else:
            continue
        shutil.rmtree(sibling, ignore_errors=True)
        removed.append(sibling)
    return removed


@contextlib.contextmanager
def atomic_output_dir(
    out_dir: str | Path, overwrite: bool = False, sources: Iterable[str | Path] = ()
) -> Iterator[Path]:
    """Yield a temp dir beside `out_dir`; rename it into place only if the body succeeds.

    Refuses an output overlapping `sources`; removes stale partial dirs of earlier killed runs;
    the final dir gets `0o777 & ~umask` (mkdtemp's 0o700 is not kept); permission problems raise
    `OutputPathError` naming the path."""
    out = check_output_location(out_dir, sources)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output {out} already exists (pass overwrite=True to replace it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_partials(out)
        prefix = f"{_partial_prefix(out)}{socket.gethostname()}-{os.getpid()}-"
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    except PermissionError as exc:
        raise OutputPathError(
            f"cannot create the output next to {out}: permission denied on "
            f"{exc.filename or out.parent}"
        ) from exc
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except PermissionError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputPathError(
            f"cannot write the output {out}: permission denied on {exc.filename or out}"
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
