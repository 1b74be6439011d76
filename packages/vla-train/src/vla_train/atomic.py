"""The one way vla-train writes files others may read while it runs: stage next to the target,
then `os.replace` (atomic on POSIX), so a crash never leaves a half-written file or folder.
Also the one GIF writer (evaluation videos, expert renders)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "write_gif",
]


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` via a temp file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any, *, indent: int = 4) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a staging folder beside `final`; on success it replaces `final` (an existing
    `final` is removed first), on error it is deleted."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_gif(
    frames: Sequence[np.ndarray], path: Path, *, fps: int = 10, size: int | None = None
) -> None:
    """Looping GIF of RGB uint8 `frames` (resized to `size`² when given), written atomically."""
    from PIL import Image

    if not frames:
        raise ValueError(f"write_gif({path}): no frames")
    images = [Image.fromarray(np.asarray(f)) for f in frames]
    if size is not None:
        images = [im.resize((size, size), Image.Resampling.BILINEAR) for im in images]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".gif")
    os.close(fd)
    try:
        images[0].save(
            tmp, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
        )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
