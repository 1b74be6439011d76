"""Write episodes as a LeRobotDataset v3.0 folder with pyarrow (and PyAV for video), no `datasets`.

Layout (lerobot `src/lerobot/datasets/utils.py`, v3.0): `meta/info.json`, `meta/stats.json`,
`meta/tasks.parquet`, `meta/episodes/chunk-000/file-000.parquet` (one row per episode) and
`data/chunk-000/file-000.parquet` (frames of many episodes, a new file past ~100 MB). Images are
PNG bytes in a `{bytes, path}` struct column, which is how lerobot stores `dtype: "image"`
features in parquet; info.json records the encoding. With `video=True` every image feature is
instead encoded into `videos/<key>/chunk-*/file-*.mp4` (`dtype: "video"`, lerobot's default
storage: libsvtav1 AV1, yuv420p, GOP 2, CRF 30; libx264 when PyAV lacks libsvtav1), episodes
appended to one file with their `from_timestamp`/`to_timestamp` in the episodes metadata. The folder is built under `<root>.partial`
and renamed into place by `finalize()`, so a crash never leaves a half-written dataset at `root`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vla_train.data.layout import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_FILES_SIZE_IN_MB,
    DATA_PATH,
    DEFAULT_COLUMNS,
    EPISODES_PATH,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_FILES_SIZE_IN_MB,
    VIDEO_PATH,
    FeatureSpec,
    atomic_write_json,
)
from vla_train.data.stats import QUANTILE_KEYS, feature_stats, merge_stats
from vla_train.data.video import VideoEncoderSettings, VideoFileEncoder, video_info

__all__ = ["LeRobotWriter", "encode_png", "feature_stats", "merge_stats"]

_ENCODE_THREADS = max(1, min(8, len(os.sched_getaffinity(0))))


def encode_png(frame: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> PNG bytes (lossless, so the reader gets the exact pixels back)."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def _arrow_column(
    values: np.ndarray, spec: FeatureSpec, encoded: Sequence[bytes] | None = None
) -> pa.Array:
    """[T, *shape] -> one parquet column: a scalar for shape (1,), fixed-size lists otherwise
    (nested for multi-dim arrays, as HF `datasets` Sequence/ArrayND store them)."""
    if spec.dtype == "image":
        if encoded is None:
            with ThreadPoolExecutor(max_workers=_ENCODE_THREADS) as pool:  # PIL drops the GIL
                encoded = list(pool.map(encode_png, values))
        return pa.array(
            [{"bytes": b, "path": None} for b in encoded],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    arrow_type = pa.from_numpy_dtype(np.dtype(spec.dtype))
    flat = values.astype(spec.dtype, copy=False).reshape(-1)
    if spec.shape == (1,):
        return pa.array(flat, type=arrow_type)
    column: pa.Array = pa.array(flat, type=arrow_type)
    for dim in reversed(spec.shape):
        column = pa.FixedSizeListArray.from_arrays(column, dim)
    return column


class LeRobotWriter:
    """Accumulate episodes (`add_episode`) and write the whole v3.0 folder on `finalize()`.

    `features` are the user columns (e.g. `observation.state`, `action`); the default columns
    (`timestamp`, `frame_index`, `episode_index`, `index`, `task_index`) are added here.
    """

    def __init__(
        self,
        root: Path,
        features: Mapping[str, FeatureSpec],
        fps: int,
        task: str,
        robot_type: str | None = None,
        overwrite: bool = False,
        video: bool = False,
        video_settings: VideoEncoderSettings | None = None,
    ) -> None:
        clash = sorted(set(features) & set(DEFAULT_COLUMNS))
        if clash:
            raise ValueError(f"features {clash} collide with LeRobot's default columns")
        if fps <= 0:
            raise ValueError(f"fps={fps}: expected a positive integer")
        self.root = Path(root)
        if self.root.exists() and not overwrite:
            raise FileExistsError(f"{self.root} exists; pass overwrite=True to replace it")
        self.features = dict(features)
        self.fps = int(fps)
        self.task = task
        self.robot_type = robot_type
        self.overwrite = overwrite
        self.video = bool(video)
        self.video_keys = [k for k, f in self.features.items() if video and f.dtype == "image"]
        if video_settings is not None and not video:
            raise ValueError("video_settings given but video=False")
        self.video_settings = video_settings or (VideoEncoderSettings.default() if video else None)
        for key in self.video_keys:
            h, w, _ = self.features[key].shape
            if h % 2 or w % 2:
                raise ValueError(
                    f"video feature {key!r}: shape {self.features[key].shape} needs even H, W (yuv420p)"
                )
        self._encoders: dict[str, VideoFileEncoder] = {}
        self._video_file_index: dict[str, int] = dict.fromkeys(self.video_keys, 0)
        self._video_info: dict[str, dict[str, Any]] = {}
        self._staging = self.root.with_name(self.root.name + ".partial")
        if self._staging.exists():
            shutil.rmtree(self._staging)
        self._pending: list[pa.Table] = []  # episodes not yet flushed to a data file
        self._pending_bytes = 0
        self._file_index = 0
        self._episodes: list[dict[str, Any]] = []
        self._episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self._num_frames = 0

    def add_episode(
        self,
        frames: Mapping[str, np.ndarray],
        encoded_images: Mapping[str, Sequence[bytes]] | None = None,
    ) -> int:
        """`frames[key]` is [T, *features[key].shape] (images [T, H, W, 3] uint8). Returns the
        new episode's index. `encoded_images[key]` may hold the frames' PNG bytes already
        (encoded by `encode_png` in a worker process), which are then stored as given."""
        encoded_images = encoded_images or {}
        for key, blobs in encoded_images.items():
            if key not in self.features or self.features[key].dtype != "image":
                raise KeyError(f"encoded_images[{key!r}]: not an image feature")
            if len(blobs) != len(frames[key]):
                raise ValueError(
                    f"encoded_images[{key!r}] has {len(blobs)} frames, {key!r} has {len(frames[key])}"
                )
        missing = sorted(set(self.features) - set(frames))
        extra = sorted(set(frames) - set(self.features))
        if missing or extra:
            raise KeyError(f"episode columns: missing {missing}, unexpected {extra}")
        length = len(next(iter(frames.values())))
        if length == 0:
            raise ValueError("an episode needs at least one frame")
        episode_index = len(self._episodes)
        columns: dict[str, pa.Array] = {}
        stats: dict[str, dict[str, np.ndarray]] = {}
        for key, spec in self.features.items():
            values = np.asarray(frames[key])
            if spec.shape == (1,) and values.ndim == 1:
                values = values[:, None]
            if values.shape != (length, *spec.shape):
                raise ValueError(
                    f"episode column {key!r} has shape {values.shape}, "
                    f"expected {(length, *spec.shape)}"
                )
            if spec.dtype == "image" and values.dtype != np.uint8:
                raise ValueError(f"image column {key!r} has dtype {values.dtype}, expected uint8")
            stats[key] = feature_stats(values, spec)
            if key in self.video_keys:
                continue  # encoded below, once every column has been checked
            columns[key] = _arrow_column(values, spec, encoded_images.get(key))
        video_meta = self._encode_videos(frames) if self.video_keys else {}
        frame_index = np.arange(length, dtype=np.int64)
        defaults: dict[str, np.ndarray] = {
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(length, episode_index, dtype=np.int64),
            "index": self._num_frames + frame_index,
            "task_index": np.zeros(length, dtype=np.int64),
        }
        for key, default in defaults.items():
            columns[key] = pa.array(default)
            stats[key] = feature_stats(default[:, None], FeatureSpec(DEFAULT_COLUMNS[key], (1,)))
        table = pa.table(columns)
        if self._pending and self._pending_bytes + table.nbytes > DATA_FILES_SIZE_IN_MB * 2**20:
            self._flush()
        chunk_index, file_index = divmod(self._file_index, CHUNKS_SIZE)
        self._pending.append(table)
        self._pending_bytes += table.nbytes
        self._episodes.append(
            {
                "episode_index": episode_index,
                "tasks": [self.task],
                "length": length,
                "data/chunk_index": chunk_index,
                "data/file_index": file_index,
                "dataset_from_index": self._num_frames,
                "dataset_to_index": self._num_frames + length,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
                **video_meta,
            }
        )
        self._episode_stats.append(stats)
        self._num_frames += length
        return episode_index

    def _encode_videos(self, frames: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Append this episode to each video feature's current mp4 -> its episodes-metadata
        columns (`videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp}`)."""
        assert self.video_settings is not None
        meta: dict[str, Any] = {}
        for key in self.video_keys:
            encoder = self._encoders.get(key)
            if encoder is not None and encoder.size_bytes() > VIDEO_FILES_SIZE_IN_MB * 2**20:
                self._close_video(key)
                self._video_file_index[key] += 1
                encoder = None
            chunk_index, file_index = divmod(self._video_file_index[key], CHUNKS_SIZE)
            if encoder is None:
                path = self._staging / VIDEO_PATH.format(
                    video_key=key, chunk_index=chunk_index, file_index=file_index
                )
                h, w, _ = self.features[key].shape
                encoder = VideoFileEncoder(path, self.fps, h, w, self.video_settings)
                self._encoders[key] = encoder
            start, stop = encoder.add(np.asarray(frames[key]))
            meta[f"videos/{key}/chunk_index"] = chunk_index
            meta[f"videos/{key}/file_index"] = file_index
            meta[f"videos/{key}/from_timestamp"] = start
            meta[f"videos/{key}/to_timestamp"] = stop
        return meta

    def _close_video(self, key: str) -> None:
        encoder = self._encoders.pop(key)
        encoder.close()
        assert self.video_settings is not None
        self._video_info.setdefault(key, video_info(encoder.path, self.video_settings))

    def _flush(self) -> None:
        if not self._pending:
            return
        chunk_index, file_index = divmod(self._file_index, CHUNKS_SIZE)
        path = self._staging / DATA_PATH.format(chunk_index=chunk_index, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(self._pending), path)
        self._pending, self._pending_bytes = [], 0
        self._file_index += 1

    def _write_episodes(self) -> None:
        columns: dict[str, list[Any]] = {
            k: [e[k] for e in self._episodes] for k in self._episodes[0]
        }
        for key in self._episode_stats[0]:
            for stat in ("min", "max", "mean", "std", "count", *QUANTILE_KEYS):
                columns[f"stats/{key}/{stat}"] = [
                    s[key][stat].reshape(-1).tolist() for s in self._episode_stats
                ]
        path = self._staging / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)

    def _write_tasks(self) -> None:
        # pandas metadata makes `pd.read_parquet` return the task string as the index, which is
        # what lerobot's `load_tasks` expects; pyarrow-only readers see a plain "task" column.
        table = pa.table({"task_index": pa.array([0], pa.int64()), "task": [self.task]})
        pandas_meta = {
            "index_columns": ["task"],
            "column_indexes": [],
            "columns": [
                {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                 "numpy_type": "int64", "metadata": None},
                {"name": "task", "field_name": "task", "pandas_type": "unicode",
                 "numpy_type": "object", "metadata": None},
            ],
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.2.0",
        }  # fmt: skip
        table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        path = self._staging / TASKS_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    def finalize(self) -> Path:
        """Write data, episodes, tasks, stats and info; then move the folder to `root`."""
        if not self._episodes:
            raise ValueError("no episode was added; refusing to write an empty dataset")
        self._flush()
        for key in list(self._encoders):
            self._close_video(key)
        self._write_episodes()
        self._write_tasks()
        all_keys = list(self._episode_stats[0])
        stats = {
            key: {
                k: v.tolist() for k, v in merge_stats([s[key] for s in self._episode_stats]).items()
            }
            for key in all_keys
        }
        atomic_write_json(self._staging / STATS_PATH, stats)
        features: dict[str, Any] = {k: spec.to_info() for k, spec in self.features.items()}
        for key in self.video_keys:
            features[key] = {
                "dtype": "video",
                "shape": list(self.features[key].shape),
                "names": ["height", "width", "channels"],
                "info": self._video_info[key],
            }
        for key, dtype in DEFAULT_COLUMNS.items():
            features[key] = {"dtype": dtype, "shape": [1], "names": None}
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self._num_frames,
            "total_tasks": 1,
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": 500,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": features,
        }
        atomic_write_json(self._staging / INFO_PATH, info)
        if self.root.exists():
            shutil.rmtree(self.root)
        self._staging.rename(self.root)
        return self.root
