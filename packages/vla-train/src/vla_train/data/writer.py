"""Write episodes as a LeRobotDataset v3.0 folder with pyarrow only (no `datasets`, no video).

Layout (lerobot `src/lerobot/datasets/utils.py`, v3.0): `meta/info.json`, `meta/stats.json`,
`meta/tasks.parquet`, `meta/episodes/chunk-000/file-000.parquet` (one row per episode) and
`data/chunk-000/file-000.parquet` (frames of many episodes, a new file past ~100 MB). Images are
PNG bytes in a `{bytes, path}` struct column, which is how lerobot stores `dtype: "image"`
features in parquet; info.json records the encoding. The folder is built under `<root>.partial`
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
    FeatureSpec,
    atomic_write_json,
)

_ENCODE_THREADS = max(1, min(8, len(os.sched_getaffinity(0))))


def encode_png(frame: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> PNG bytes (lossless, so the reader gets the exact pixels back)."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def feature_stats(values: np.ndarray, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """min/max/mean/std/count over frames; images per channel in [0, 1] with shape [3, 1, 1]
    (lerobot's convention for image stats)."""
    if spec.dtype == "image":
        # Exact and fast: a 256-bin histogram per channel instead of float copies of every pixel.
        levels = np.arange(256, dtype=np.float64) / 255.0
        hist = np.stack([np.bincount(values[..., c].ravel(), minlength=256) for c in range(3)])
        n = hist.sum(1)  # [3]
        mean = hist @ levels / n
        present = hist > 0
        stats = {
            "min": levels[present.argmax(1)],
            "max": levels[255 - present[:, ::-1].argmax(1)],
            "mean": mean,
            "std": np.sqrt(np.maximum(hist @ levels**2 / n - mean**2, 0.0)),
        }
        stats = {k: v.reshape(3, 1, 1) for k, v in stats.items()}
    else:
        x = values.astype(np.float64).reshape(len(values), -1)  # [T, D]
        stats = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
    stats["count"] = np.array([len(values)], dtype=np.int64)
    return stats


def merge_stats(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine per-episode stats exactly (parallel-variance formula on the counts)."""
    counts = np.array([float(p["count"][0]) for p in parts])
    total = counts.sum()
    w = counts / total
    means = np.stack([p["mean"] for p in parts])
    mean = np.tensordot(w, means, axes=1)
    second = np.tensordot(w, np.stack([p["std"] ** 2 + p["mean"] ** 2 for p in parts]), axes=1)
    return {
        "min": np.min(np.stack([p["min"] for p in parts]), 0),
        "max": np.max(np.stack([p["max"] for p in parts]), 0),
        "mean": mean,
        "std": np.sqrt(np.maximum(second - mean**2, 0.0)),
        "count": np.array([int(total)], dtype=np.int64),
    }


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
            columns[key] = _arrow_column(values, spec, encoded_images.get(key))
            stats[key] = feature_stats(values, spec)
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
            }
        )
        self._episode_stats.append(stats)
        self._num_frames += length
        return episode_index

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
            for stat in ("min", "max", "mean", "std", "count"):
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
            "video_path": None,  # no video features: images live in the parquet
            "features": features,
        }
        atomic_write_json(self._staging / INFO_PATH, info)
        if self.root.exists():
            shutil.rmtree(self.root)
        self._staging.rename(self.root)
        return self.root
