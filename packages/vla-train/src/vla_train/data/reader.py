"""Load a local LeRobot dataset (v3.0 or v2.1) into memory as numpy columns.

v3.0: frames of many episodes per `data/chunk-*/file-*.parquet`; v2.1: one
`data/chunk-*/episode_*.parquet` per episode. Either way we read every data file once, order the
frames by the global `index`, and keep numeric features as [N, *shape] arrays. Image features
stay as encoded PNG bytes (decoded on demand by `ImageColumn`, with a cache) or, when a dataset
stores uint8 arrays, as one [N, H, W, 3] array. Video features (`dtype: "video"`) become a
`VideoColumn` that decodes frames by timestamp from the mp4 files on demand.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from vla_train.data.layout import (
    CHUNKS_SIZE,
    DEFAULT_COLUMNS,
    INFO_PATH,
    STATS_PATH,
    V21_EPISODES_STATS_PATH,
    V21_VIDEO_PATH,
    VIDEO_PATH,
    FeatureSpec,
    load_json,
)
from vla_train.data.stats import merge_stats
from vla_train.data.video import DEFAULT_TOLERANCE_S, VideoColumn, check_decoder


class ImageColumn:
    """[N, H, W, 3] uint8 frames, from PNG bytes decoded lazily and cached, or a dense array."""

    def __init__(
        self, shape: tuple[int, int, int], encoded: list[bytes] | None, dense: np.ndarray | None
    ) -> None:
        if (encoded is None) == (dense is None):
            raise ValueError("ImageColumn needs exactly one of encoded bytes or a dense array")
        self.shape = shape
        self._encoded = encoded
        if dense is not None:
            self._frames = dense
            self._decoded = np.ones(len(dense), dtype=bool)
        else:
            assert encoded is not None
            # np.empty only touches the pages of the frames we decode.
            self._frames = np.empty((len(encoded), *shape), dtype=np.uint8)
            self._decoded = np.zeros(len(encoded), dtype=bool)

    def __len__(self) -> int:
        return len(self._frames)

    def _decode(self, i: int) -> None:
        assert self._encoded is not None
        frame = np.asarray(Image.open(io.BytesIO(self._encoded[i])).convert("RGB"))
        if frame.shape != self.shape:
            raise ValueError(f"frame {i} decodes to {frame.shape}, info.json says {self.shape}")
        self._frames[i] = frame
        self._decoded[i] = True

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Frames at `indices` -> [len(indices), H, W, 3] uint8."""
        if not self._decoded[indices].all():
            for i in np.unique(indices[~self._decoded[indices]]):
                self._decode(int(i))
        return self._frames[indices]

    def all(self, threads: int = 8) -> np.ndarray:
        """Every frame, decoding the missing ones on `threads` threads (PIL drops the GIL)."""
        missing = np.flatnonzero(~self._decoded).tolist()
        if missing:
            with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                list(pool.map(self._decode, missing))  # each writes its own row
        frames = self._frames.view()
        frames.flags.writeable = False  # the cache itself: read-only for callers
        return frames


FrameColumn = ImageColumn | VideoColumn  # what `LeRobotFrames.images` holds per camera


@dataclass
class LeRobotFrames:
    """All frames of a dataset in memory. `columns[key]` is [N, *shape] in the feature's dtype
    (scalar features keep shape (1,)), ordered by the global frame `index`."""

    root: Path
    info: dict[str, Any]
    features: dict[str, FeatureSpec]
    columns: dict[str, np.ndarray]
    images: dict[str, FrameColumn]
    episode_from: dict[int, int] = field(default_factory=dict)  # episode -> first row
    episode_to: dict[int, int] = field(default_factory=dict)  # episode -> last row + 1

    @property
    def num_frames(self) -> int:
        return len(self.columns["index"])

    @property
    def episodes(self) -> list[int]:
        return sorted(self.episode_from)


def _numeric_column(column: pa.ChunkedArray, key: str, spec: FeatureSpec) -> np.ndarray:
    """Parquet column (scalar or nested lists) -> [N, *shape] numpy array."""
    n = len(column)
    flat = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    while (
        pa.types.is_list(flat.type)
        or pa.types.is_fixed_size_list(flat.type)
        or (pa.types.is_large_list(flat.type))
    ):
        flat = pc.list_flatten(flat)
    values = flat.to_numpy(zero_copy_only=False)
    expected = n * int(np.prod(spec.shape))
    if values.size != expected:
        raise ValueError(
            f"column {key!r} holds {values.size} values for {n} frames; "
            f"info.json shape {spec.shape} needs {expected}"
        )
    return values.reshape(n, *spec.shape).astype(spec.dtype, copy=False)


def _image_column(column: pa.ChunkedArray, key: str, spec: FeatureSpec) -> ImageColumn:
    shape = (spec.shape[0], spec.shape[1], spec.shape[2])
    chunk = column.combine_chunks()
    if pa.types.is_struct(chunk.type):
        encoded = chunk.field("bytes").to_pylist()
        if any(b is None for b in encoded):
            raise ValueError(f"image column {key!r} has frames without embedded bytes (paths only)")
        return ImageColumn(shape, encoded=encoded, dense=None)
    if pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type):
        return ImageColumn(shape, encoded=chunk.to_pylist(), dense=None)
    dense = _numeric_column(column, key, FeatureSpec("uint8", spec.shape))
    return ImageColumn(shape, encoded=None, dense=dense)


def _data_files(root: Path, version: str) -> list[Path]:
    pattern = (
        "data/chunk-*/file-*.parquet"
        if version.startswith("v3")
        else "data/chunk-*/episode_*.parquet"
    )
    files = sorted(root.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no data files matching {root / pattern}")
    return files


def read_info(root: Path) -> dict[str, Any]:
    info = load_json(Path(root) / INFO_PATH)
    version = str(info.get("codebase_version", ""))
    if not (version.startswith("v3") or version.startswith("v2")):
        raise ValueError(
            f"{root}: codebase_version {version!r} is not a v2.x or v3.x LeRobot dataset"
        )
    if "features" not in info:
        raise ValueError(f"{root / INFO_PATH} has no 'features'")
    return info


def _episode_video_files(
    root: Path, info: dict[str, Any], key: str, episodes: list[int]
) -> dict[int, tuple[Path, float]]:
    """episode -> (mp4 path, from_timestamp) for video feature `key` (v3.0 reads the episodes
    metadata parquet files; v2.1 has one file per episode starting at 0 s)."""
    version = str(info["codebase_version"])
    if version.startswith("v3"):
        template = str(info.get("video_path") or VIDEO_PATH)
        cols = [
            "episode_index",
            *(f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")),
        ]
        files = sorted(root.glob("meta/episodes/chunk-*/file-*.parquet"))
        if not files:
            raise FileNotFoundError(f"{root}: no meta/episodes/chunk-*/file-*.parquet")
        out: dict[int, tuple[Path, float]] = {}
        for path in files:
            present = set(pq.read_schema(path).names)
            lacking = [c for c in cols if c not in present]
            if lacking:
                raise KeyError(f"{path}: video feature {key!r} needs columns {lacking}")
            for ep, chunk, file, start in zip(
                *(pq.read_table(path, columns=cols)[c].to_pylist() for c in cols)
            ):
                rel = template.format(video_key=key, chunk_index=int(chunk), file_index=int(file))
                out[int(ep)] = (root / rel, float(start))
    else:
        template = str(info.get("video_path") or V21_VIDEO_PATH)
        chunks = int(info.get("chunks_size", CHUNKS_SIZE))
        out = {
            ep: (root / template.format(episode_chunk=ep // chunks, video_key=key, episode_index=ep), 0.0)
            for ep in episodes
        }  # fmt: skip
    lacking_eps = [ep for ep in episodes if ep not in out]
    if lacking_eps:
        raise KeyError(f"{root}: episodes {lacking_eps[:10]} have no {key!r} video in the metadata")
    for ep in episodes:
        if not out[ep][0].is_file():
            raise FileNotFoundError(
                f"{root}: video file {out[ep][0]} of feature {key!r}, episode {ep} not found"
            )
    return out


def _video_column(
    root: Path, info: dict[str, Any], key: str, spec: FeatureSpec,
    timestamps: np.ndarray, episode_index: np.ndarray, tolerance_s: float,
) -> VideoColumn:  # fmt: skip
    codec = (info["features"][key].get("info") or {}).get("video.codec")
    if codec is not None:
        check_decoder(str(codec), key, root / INFO_PATH)
    files = _episode_video_files(root, info, key, np.unique(episode_index).tolist())
    paths = sorted({p for p, _ in files.values()})
    file_id = {p: i for i, p in enumerate(paths)}
    ep_file = {ep: file_id[p] for ep, (p, _) in files.items()}
    ep_start = {ep: start for ep, (_, start) in files.items()}
    eps = episode_index.tolist()
    file_of_row = np.array([ep_file[e] for e in eps], dtype=np.int64)
    times = np.array([ep_start[e] for e in eps], dtype=np.float64) + timestamps.astype(np.float64)
    shape = (spec.shape[0], spec.shape[1], spec.shape[2])
    return VideoColumn(key, shape, paths, file_of_row, times, episode_index, tolerance_s)


def read_frames(
    root: Path, keys: tuple[str, ...] | None = None, *, tolerance_s: float = DEFAULT_TOLERANCE_S
) -> LeRobotFrames:
    """Read the columns `keys` (all features when None) plus the default index columns.

    Video features are matched to rows by timestamp within `tolerance_s` (lerobot's default
    1e-4 s) and decoded lazily."""
    root = Path(root)
    info = read_info(root)
    feature_info: dict[str, Any] = info["features"]
    wanted = list(feature_info) if keys is None else list(dict.fromkeys([*keys, *DEFAULT_COLUMNS]))
    unknown = [k for k in wanted if k not in feature_info and k not in DEFAULT_COLUMNS]
    if unknown:
        raise KeyError(f"{root}: features {unknown} not in info.json (has {sorted(feature_info)})")
    features = {
        k: FeatureSpec.from_info(k, feature_info[k]) if k in feature_info else FeatureSpec(DEFAULT_COLUMNS[k], (1,))
        for k in wanted
    }  # fmt: skip
    tables = []
    for path in _data_files(root, str(info["codebase_version"])):
        present = set(pq.read_schema(path).names)
        tables.append(pq.read_table(path, columns=[k for k in wanted if k in present]))
    table = pa.concat_tables(tables, promote_options="default")
    order = np.argsort(table.column("index").to_numpy(), kind="stable")
    table = table.take(pa.array(order))
    columns: dict[str, np.ndarray] = {}
    images: dict[str, FrameColumn] = {}
    for key, spec in features.items():
        if spec.dtype == "video":
            continue  # stored in mp4 files, not in the parquet; built once the rows are known
        if key not in table.column_names:
            if key == "task_index":
                columns[key] = np.zeros((table.num_rows, 1), dtype=np.int64)
                continue
            raise KeyError(f"{root}: column {key!r} declared in info.json is missing from the data")
        if spec.dtype == "image" or (spec.dtype == "uint8" and len(spec.shape) == 3):
            images[key] = _image_column(table.column(key), key, spec)
        else:
            columns[key] = _numeric_column(table.column(key), key, spec)
    frames = LeRobotFrames(root=root, info=info, features=features, columns=columns, images=images)
    episode_index = columns["episode_index"][:, 0]
    starts = np.flatnonzero(np.r_[True, episode_index[1:] != episode_index[:-1]])
    ends = np.r_[starts[1:], len(episode_index)]
    for s, e in zip(starts.tolist(), ends.tolist()):
        ep = int(episode_index[s])
        if ep in frames.episode_from:
            raise ValueError(f"{root}: episode {ep} frames are not contiguous in the global index")
        frame_index = columns["frame_index"][s:e, 0]
        if not np.array_equal(frame_index, np.arange(e - s)):
            raise ValueError(f"{root}: episode {ep} frame_index is not 0..{e - s - 1}")
        frames.episode_from[ep], frames.episode_to[ep] = s, e
    for key, spec in features.items():
        if spec.dtype == "video":
            images[key] = _video_column(
                root, info, key, spec, columns["timestamp"][:, 0], episode_index, tolerance_s
            )
    frames.images = {k: images[k] for k in features if k in images}  # info.json order
    return frames


def _aggregate_v21_stats(root: Path) -> dict[str, dict[str, list[Any]]]:
    per_episode: dict[str, list[dict[str, np.ndarray]]] = {}
    for line in (root / V21_EPISODES_STATS_PATH).read_text().splitlines():
        if line.strip():
            for key, st in json.loads(line)["stats"].items():
                per_episode.setdefault(key, []).append(
                    {k: np.asarray(v, dtype=np.float64) for k, v in st.items()}
                )
    return {k: {s: v.tolist() for s, v in merge_stats(p).items()} for k, p in per_episode.items()}


def read_stats(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """`meta/stats.json` (v3.0, v2.0) or the aggregate of `meta/episodes_stats.jsonl` (v2.1), as
    float64 arrays keyed by feature then statistic (min, max, mean, std, count, ...)."""
    root = Path(root)
    if (root / STATS_PATH).is_file():
        raw = load_json(root / STATS_PATH)
    elif (root / V21_EPISODES_STATS_PATH).is_file():
        raw = _aggregate_v21_stats(root)
    else:
        raise FileNotFoundError(
            f"{root}: neither {STATS_PATH} nor {V21_EPISODES_STATS_PATH} exists"
        )
    return {
        key: {s: np.asarray(v, dtype=np.float64) for s, v in st.items()} for key, st in raw.items()
    }
