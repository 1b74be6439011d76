"""`dtype: "video"` features of LeRobot datasets: decode frames by timestamp, encode mp4 streams.

Semantics follow lerobot 0.6.1 (`src/lerobot/datasets/video_utils.py`, `dataset_reader.py`): a
frame of episode `ep` at row timestamp `t` is the decoded frame nearest to `from_timestamp[ep] + t`
in the episode's mp4 (v3.0: a shared `videos/<key>/chunk-*/file-*.mp4`; v2.1: one file per
episode, `from_timestamp = 0`), accepted only when `|Δt| < tolerance_s`. Decoding seeks to the
keyframe before the first requested time and decodes forward (lerobot's PyAV path), so one
sample costs a few frames, never a whole file. Decoded frames live in a bounded LRU cache per
process; after a fork (DataLoader workers) containers are reopened, never shared.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

DEFAULT_TOLERANCE_S = 1e-4  # lerobot `LeRobotDataset(tolerance_s=1e-4)`
DEFAULT_CACHE_MB = 256
_MAX_OPEN_CONTAINERS = 4
_CLUSTER_GAP_S = 1.0  # requested frames further apart than this are decoded by separate seeks
_DECODER_THREADS = 1  # one decoder thread per process: DataLoader workers are the parallelism
_FORKED_CONTAINERS: list[Any] = []  # see VideoColumn._reset_process_state


class VideoDecodeError(ValueError):
    """A video frame could not be produced; the message names key, file, episode and timestamp."""


def check_decoder(codec: str, key: str, where: Path) -> None:
    """Raise if PyAV's FFmpeg cannot decode `codec` (the `video.codec` of an info.json entry)."""
    try:
        av.codec.Codec(codec, "r")
    except Exception as err:  # av raises UnknownCodecError (not exported under one stable name)
        raise VideoDecodeError(
            f"{where}: feature {key!r} declares video.codec={codec!r}, which this PyAV/FFmpeg "
            f"build cannot decode ({err})"
        ) from None


@dataclass(frozen=True)
class VideoEncoderSettings:
    """The encoder lerobot 0.6.1 uses by default (`VideoEncoderConfig`: libsvtav1, yuv420p,
    g=2, crf=30, preset 12), falling back to libx264 when PyAV's FFmpeg lacks libsvtav1."""

    codec: str = "libsvtav1"
    pix_fmt: str = "yuv420p"
    g: int = 2
    crf: int = 30
    preset: int | str = 12

    def __post_init__(self) -> None:
        if self.g < 1 or self.crf < 0:
            raise ValueError(f"VideoEncoderSettings: g={self.g} must be >= 1, crf={self.crf} >= 0")
        try:
            av.codec.Codec(self.codec, "w")
        except Exception:
            raise ValueError(
                f"VideoEncoderSettings.codec={self.codec!r}: no such encoder in PyAV's FFmpeg"
            ) from None

    @classmethod
    def default(cls) -> VideoEncoderSettings:
        try:
            av.codec.Codec("libsvtav1", "w")
            return cls()
        except Exception:
            return cls(codec="libx264", crf=23, preset="medium")

    def options(self) -> dict[str, str]:
        return {"g": str(self.g), "crf": str(self.crf), "preset": str(self.preset)}


class VideoFileEncoder:
    """Append [T, H, W, 3] uint8 episodes to one mp4 (constant frame rate, pts = frame count)."""

    def __init__(
        self, path: Path, fps: int, height: int, width: int, settings: VideoEncoderSettings
    ) -> None:
        if height % 2 or width % 2:
            raise ValueError(
                f"{path}: {settings.pix_fmt} video needs even height/width, got {height}x{width}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fps = fps
        self.shape = (height, width, 3)
        self.num_frames = 0
        container: Any = av.open(str(path), "w")
        stream: Any = container.add_stream(settings.codec, rate=fps, options=settings.options())
        stream.pix_fmt = settings.pix_fmt
        stream.width, stream.height = width, height
        stream.codec_context.time_base = Fraction(1, fps)
        self._container, self._stream = container, stream

    def add(self, frames: np.ndarray) -> tuple[float, float]:
        """Encode `frames`; returns the episode's (from_timestamp, to_timestamp) in this file."""
        if frames.ndim != 4 or frames.shape[1:] != self.shape or frames.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: frames {frames.shape} {frames.dtype}, expected [T, *{self.shape}] uint8"
            )
        start = self.num_frames
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = self.num_frames
            self._container.mux(self._stream.encode(video_frame))
            self.num_frames += 1
        return start / self.fps, self.num_frames / self.fps

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()

    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


def video_info(path: Path, settings: VideoEncoderSettings) -> dict[str, Any]:
    """The `features[key]["info"]` block lerobot writes (`get_video_info`), read from the file."""
    with av.open(str(path)) as container:
        stream: Any = container.streams.video[0]
        info: dict[str, Any] = {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec.canonical_name,
            "video.pix_fmt": stream.pix_fmt,
            "video.fps": int(stream.base_rate),
            "video.channels": 3,
            "has_audio": False,
        }
    info.update({"video.g": settings.g, "video.crf": settings.crf, "video.preset": settings.preset})
    info.update({"video.fast_decode": 0, "video.extra_options": {}, "video.video_backend": "pyav"})
    info["is_depth_map"] = False
    return info


class VideoColumn:
    """[N, H, W, 3] uint8 frames of one video feature, decoded on demand by timestamp.

    Row `i` is the frame at time `times[i]` (seconds, already shifted by the episode's
    `from_timestamp`) in `paths[file_of_row[i]]`.
    """

    def __init__(
        self,
        key: str,
        shape: tuple[int, int, int],
        paths: list[Path],
        file_of_row: np.ndarray,
        times: np.ndarray,
        episode_of_row: np.ndarray,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        cache_mb: float = DEFAULT_CACHE_MB,
    ) -> None:
        if tolerance_s <= 0:
            raise ValueError(f"tolerance_s={tolerance_s}: expected > 0")
        if not len(file_of_row) == len(times) == len(episode_of_row):
            raise ValueError("VideoColumn: file_of_row, times and episode_of_row differ in length")
        self.key = key
        self.shape = shape
        self.paths = list(paths)
        self.tolerance_s = float(tolerance_s)
        self._file_of_row = np.asarray(file_of_row, dtype=np.int64)
        self._times = np.asarray(times, dtype=np.float64)
        self._episode_of_row = np.asarray(episode_of_row, dtype=np.int64)
        # Per file: its rows sorted by time, for matching decoded frames back to rows.
        self._file_rows: list[np.ndarray] = []
        for f in range(len(self.paths)):
            rows = np.flatnonzero(self._file_of_row == f)
            self._file_rows.append(rows[np.argsort(self._times[rows], kind="stable")])
        frame_bytes = int(np.prod(shape))
        self._capacity = max(1, int(cache_mb * 2**20 // frame_bytes))
        self._dense: np.ndarray | None = None
        self._reset_process_state()
        self.frames_decoded = 0  # counts decoded video frames (for tests and benchmarks)

    def _reset_process_state(self) -> None:
        # Containers opened before a fork belong to the parent: closing them here would join
        # decoder threads this process does not have (a hang), so they are parked, not closed.
        inherited = getattr(self, "_containers", None)
        if inherited:
            _FORKED_CONTAINERS.extend(inherited.values())
        self._pid = os.getpid()
        self._containers: OrderedDict[int, Any] = OrderedDict()
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:  # spawn-started workers: open their own files
        state = self.__dict__.copy()
        state["_containers"], state["_cache"] = OrderedDict(), OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self._times)

    def _where(self, row: int) -> str:
        return (
            f"feature {self.key!r}, episode {int(self._episode_of_row[row])}, timestamp "
            f"{self._times[row]:.6f} s in {self.paths[self._file_of_row[row]]}"
        )

    def _container(self, file: int) -> Any:
        if self._pid != os.getpid():  # forked: never share FFmpeg state with the parent
            self._reset_process_state()
        if file in self._containers:
            self._containers.move_to_end(file)
            return self._containers[file]
        path = self.paths[file]
        if not path.is_file():
            raise FileNotFoundError(f"feature {self.key!r}: video file {path} not found")
        try:
            container = av.open(str(path))
            if not container.streams.video:
                raise VideoDecodeError(f"feature {self.key!r}: {path} has no video stream")
            container.streams.video[0].codec_context.thread_count = _DECODER_THREADS
        except av.FFmpegError as err:
            raise VideoDecodeError(f"feature {self.key!r}: cannot open {path}: {err}") from None
        self._containers[file] = container
        if len(self._containers) > _MAX_OPEN_CONTAINERS:
            self._containers.popitem(last=False)[1].close()
        return container

    def _decode_span(self, file: int, rows: np.ndarray, store: dict[int, np.ndarray]) -> None:
        """Decode the frames of `rows` (one file, sorted by time) with one seek; every decoded
        frame that matches a row of this file within tolerance goes into `store`."""
        container = self._container(file)
        stream = container.streams.video[0]
        first, last = self._times[rows[0]], self._times[rows[-1]]
        file_rows = self._file_rows[file]
        file_times = self._times[file_rows]
        remaining = set(rows.tolist())
        decoded_times: list[float] = []
        try:
            container.seek(
                max(0, round(first / stream.time_base) - 1), backward=True, any_frame=False,
                stream=stream,
            )  # fmt: skip
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                decoded_times.append(t)
                self.frames_decoded += 1
                lo = np.searchsorted(file_times, t - self.tolerance_s, side="right")
                hi = np.searchsorted(file_times, t + self.tolerance_s, side="left")
                if hi > lo:
                    pixels = frame.to_ndarray(format="rgb24")
                    if pixels.shape != self.shape:
                        raise VideoDecodeError(
                            f"{self._where(int(file_rows[lo]))}: frame decodes to "
                            f"{pixels.shape}, info.json says {self.shape}"
                        )
                    for row in file_rows[lo:hi].tolist():
                        store[row] = pixels
                        remaining.discard(row)
                if not remaining or t > last + self.tolerance_s:
                    break
        except av.FFmpegError as err:
            raise VideoDecodeError(f"{self._where(int(rows[0]))}: decoding failed: {err}") from None
        if remaining:
            row = min(remaining, key=lambda r: self._times[r])
            seen = np.asarray(decoded_times)
            nearest = float(np.abs(seen - self._times[row]).min()) if len(seen) else np.inf
            raise VideoDecodeError(
                f"{self._where(row)}: no frame within tolerance_s={self.tolerance_s} (nearest "
                f"decoded frame is {nearest:.6f} s away; is the timestamp outside the video?)"
            )

    def _decode_rows(self, rows: np.ndarray, store: dict[int, np.ndarray]) -> None:
        for file in np.unique(self._file_of_row[rows]).tolist():
            in_file = rows[self._file_of_row[rows] == file]
            in_file = in_file[np.argsort(self._times[in_file], kind="stable")]
            gaps = np.flatnonzero(np.diff(self._times[in_file]) > _CLUSTER_GAP_S) + 1
            for cluster in np.split(in_file, gaps):
                if not all(int(r) in store for r in cluster):
                    self._decode_span(file, cluster, store)

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Frames at `indices` -> [len(indices), H, W, 3] uint8."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self._dense is not None:
            return self._dense[indices]
        if self._pid != os.getpid():
            self._reset_process_state()
        out = np.empty((len(indices), *self.shape), dtype=np.uint8)
        missing = np.unique([i for i in indices.tolist() if i not in self._cache])
        decoded: dict[int, np.ndarray] = {}
        if len(missing):
            self._decode_rows(missing, decoded)
        for row, pixels in decoded.items():
            self._cache[row] = pixels
            self._cache.move_to_end(row)
        for j, i in enumerate(indices.tolist()):
            frame = decoded.get(i)
            if frame is None:
                frame = self._cache[i]
                self._cache.move_to_end(i)
            out[j] = frame
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return out

    def all(self, threads: int = 1) -> np.ndarray:
        """Every frame, decoding each file once front to back; afterwards `get` reads this array
        (call before forking DataLoader workers so they share it). `threads` is unused (one
        decoder per file) and kept for `ImageColumn` compatibility."""
        del threads
        if self._dense is None:
            dense = np.empty((len(self), *self.shape), dtype=np.uint8)
            for file, rows in enumerate(self._file_rows):
                if len(rows):
                    store: dict[int, np.ndarray] = {}
                    self._decode_span(file, rows, store)
                    for row, pixels in store.items():
                        dense[row] = pixels
            dense.flags.writeable = False
            self._dense = dense
            self._cache.clear()
        return self._dense
