"""Video features (`dtype: "video"`): our writer's mp4 output, v2.1 per-episode files, lazy
decoding with a bounded cache, DataLoader workers, and named errors on bad input.

Pixels through AV1/H.264 are lossy, so round trips are checked as "every decoded frame is
nearest to its own source frame" and mean |Δ| <= 8 / 255 (measured 5.3 levels with AV1 CRF 30 on
these 16x24 frames, whose gradient wraps at 255 — a sharp edge).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from vla_train.data import FeatureSpec, LeRobotWindowDataset, LeRobotWriter, read_frames
from vla_train.data.video import (
    VideoColumn,
    VideoDecodeError,
    VideoEncoderSettings,
    VideoFileEncoder,
)

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot"
FEATURES = {
    "observation.state": FeatureSpec("float32", (2,)),
    "observation.image": FeatureSpec("image", (16, 24, 3)),
    "action": FeatureSpec("float32", (2,)),
}


def smooth_frames(n: int, offset: int) -> np.ndarray:
    """Distinct, codec-friendly frames: a gradient whose phase moves with t."""
    yy, xx = np.mgrid[0:16, 0:24]
    return np.stack(
        [np.stack([(xx * 8 + 9 * (t + offset)) % 256, yy * 12, np.full_like(xx, 5 * (t + offset))], -1)
         for t in range(n)]
    ).astype(np.uint8)  # fmt: skip


def episodes(lengths: list[int]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out, offset = [], 0
    for n in lengths:
        out.append(
            {
                "observation.state": rng.normal(size=(n, 2)).astype(np.float32),
                "observation.image": smooth_frames(n, offset),
                "action": rng.normal(size=(n, 2)).astype(np.float32),
            }
        )
        offset += n
    return out


def write(root: Path, eps: list[dict[str, np.ndarray]], **kwargs: object) -> Path:
    writer = LeRobotWriter(root, FEATURES, fps=10, task="t", video=True, **kwargs)  # type: ignore[arg-type]
    for ep in eps:
        writer.add_episode(ep)
    return writer.finalize()


def assert_close_to_source(decoded: np.ndarray, source: np.ndarray) -> None:
    diff = np.abs(decoded.astype(np.float64) - source)
    assert diff.mean() <= 8.0, diff.mean()
    distance = np.abs(decoded[:, None].astype(np.float64) - source[None]).mean(axis=(2, 3, 4))
    np.testing.assert_array_equal(distance.argmin(1), np.arange(len(source)))


@pytest.mark.parametrize("codec", ["libsvtav1", "libx264"])
def test_writer_video_round_trip_and_lerobot_metadata(tmp_path: Path, codec: str) -> None:
    eps = episodes([5, 1, 9])
    settings = (
        VideoEncoderSettings()
        if codec == "libsvtav1"
        else VideoEncoderSettings(codec, crf=18, preset="medium")
    )
    root = write(tmp_path / "ds", eps, video_settings=settings)
    info = json.loads((root / "meta/info.json").read_text())
    feature = info["features"]["observation.image"]
    assert feature["dtype"] == "video" and feature["shape"] == [16, 24, 3]
    assert feature["info"]["video.codec"] == ("av1" if codec == "libsvtav1" else "h264")
    reference = json.loads((FIXTURES / "video/meta/info.json").read_text())
    ref_feature = reference["features"]["observation.images.top"]
    assert set(feature["info"]) == set(ref_feature["info"])  # the block lerobot 0.6.1 writes
    assert info["video_path"] == reference["video_path"]
    ours = pq.read_schema(root / "meta/episodes/chunk-000/file-000.parquet").names
    theirs = pq.read_schema(FIXTURES / "video/meta/episodes/chunk-000/file-000.parquet").names
    video_cols = {c.replace("observation.image", "K") for c in ours if c.startswith("videos/")}
    assert video_cols == {
        c.replace("observation.images.top", "K")
        for c in theirs
        if c.startswith("videos/observation.images.top")
    }
    assert "observation.image" not in pq.read_schema(root / "data/chunk-000/file-000.parquet").names
    meta = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [m["videos/observation.image/from_timestamp"] for m in meta] == [0.0, 0.5, 0.6]
    assert [m["videos/observation.image/to_timestamp"] for m in meta] == [0.5, 0.6, 1.5]
    frames = read_frames(root)
    column = frames.images["observation.image"]
    assert isinstance(column, VideoColumn) and len(column.paths) == 1
    assert_close_to_source(column.all(), np.concatenate([e["observation.image"] for e in eps]))
    np.testing.assert_array_equal(
        frames.columns["action"], np.concatenate([e["action"] for e in eps])
    )


def test_one_sample_decodes_a_few_frames_not_the_video(tmp_path: Path) -> None:
    root = write(tmp_path / "ds", episodes([60, 60]))
    column = read_frames(root).images["observation.image"]
    assert isinstance(column, VideoColumn)
    source = np.concatenate([e["observation.image"] for e in episodes([60, 60])])
    got = column.get(np.array([95, 96]))
    assert column.frames_decoded <= 4  # GOP 2: at most one keyframe back, then forward
    assert_close_to_source(column.all()[[95, 96]], source[[95, 96]])
    np.testing.assert_array_equal(got, column.all()[[95, 96]])
    fresh = read_frames(root).images["observation.image"]
    fresh.get(np.array([10, 110]))  # far apart: two short seeks, not one long decode
    assert fresh.frames_decoded <= 6
    before = fresh.frames_decoded
    fresh.get(np.array([110, 10]))
    assert fresh.frames_decoded == before  # served from the cache


def test_cache_is_bounded(tmp_path: Path) -> None:
    root = write(tmp_path / "ds", episodes([30]))
    frames = read_frames(root)
    column = frames.images["observation.image"]
    assert isinstance(column, VideoColumn)
    small = VideoColumn(
        column.key, column.shape, column.paths, np.zeros(30, np.int64), np.arange(30) / 10,
        np.zeros(30, np.int64), cache_mb=3 * 16 * 24 * 3 / 2**20,
    )  # fmt: skip
    for i in range(30):
        small.get(np.array([i]))
    assert len(small._cache) <= 3


def test_dataloader_workers_match_the_main_process(tmp_path: Path) -> None:
    root = write(tmp_path / "ds", episodes([12, 7]))
    ds = LeRobotWindowDataset(root, n_obs_steps=2, horizon=4, n_action_steps=2,
                              keys=("observation.state", "observation.image"))  # fmt: skip
    ds[0]  # open a container in the parent: workers must not reuse it
    expected = [ds[i]["observation.image"] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    got = torch.cat([b["observation.image"] for b in loader])
    assert torch.equal(got, torch.stack(expected))


def write_v21_video(root: Path, eps: list[dict[str, np.ndarray]]) -> None:
    """A v2.1 video dataset: one parquet and one mp4 per episode, no from_timestamp."""
    info = {
        "codebase_version": "v2.1", "fps": 10, "chunks_size": 1000,
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {
            "observation.state": {"dtype": "float32", "shape": [2], "names": None},
            "observation.image": {"dtype": "video", "shape": [3, 16, 24],
                                  "names": ["channels", "height", "width"],
                                  "info": {"video.codec": "av1"}},
            "action": {"dtype": "float32", "shape": [2], "names": None},
            **{k: {"dtype": "int64", "shape": [1], "names": None}
               for k in ("frame_index", "episode_index", "index", "task_index")},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        },
    }  # fmt: skip
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    offset = 0
    for ep, data in enumerate(eps):
        n = len(data["action"])
        table = pa.table(
            {
                "observation.state": pa.array(data["observation.state"].tolist()),
                "action": pa.array(data["action"].tolist()),
                "timestamp": pa.array(np.arange(n) / 10, pa.float32()),
                "frame_index": pa.array(np.arange(n)),
                "episode_index": pa.array(np.full(n, ep)),
                "index": pa.array(offset + np.arange(n)),
                "task_index": pa.array(np.zeros(n, dtype=np.int64)),
            }
        )
        path = root / f"data/chunk-000/episode_{ep:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        video = root / f"videos/chunk-000/observation.image/episode_{ep:06d}.mp4"
        encoder = VideoFileEncoder(video, 10, 16, 24, VideoEncoderSettings())
        encoder.add(data["observation.image"])
        encoder.close()
        offset += n


def test_reads_v21_one_mp4_per_episode_channel_first_shape(tmp_path: Path) -> None:
    eps = episodes([4, 6])
    write_v21_video(tmp_path / "v21", eps)
    frames = read_frames(tmp_path / "v21")
    column = frames.images["observation.image"]
    assert isinstance(column, VideoColumn) and len(column.paths) == 2
    assert column.shape == (16, 24, 3)  # (C, H, W) names in info.json -> (H, W, C)
    assert_close_to_source(column.all(), np.concatenate([e["observation.image"] for e in eps]))


# ---- bad input -----------------------------------------------------------------------------


@pytest.fixture
def video_copy(tmp_path: Path) -> Path:
    root = tmp_path / "video"
    shutil.copytree(FIXTURES / "video", root)
    return root


def test_missing_video_file_is_named(video_copy: Path) -> None:
    path = video_copy / "videos/observation.images.wrist/chunk-000/file-000.mp4"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"file-000\.mp4.*observation\.images\.wrist"):
        read_frames(video_copy)


def test_truncated_or_corrupt_mp4_is_named(video_copy: Path) -> None:
    path = video_copy / "videos/observation.images.top/chunk-000/file-000.mp4"
    path.write_bytes(path.read_bytes()[:300])
    frames = read_frames(video_copy)  # lazy: the file is only opened when a frame is needed
    with pytest.raises(VideoDecodeError, match=r"observation\.images\.top.*file-000\.mp4"):
        frames.images["observation.images.top"].get(np.array([12]))
    path.write_bytes(b"not an mp4 at all")
    with pytest.raises(VideoDecodeError, match=r"observation\.images\.top.*cannot open"):
        read_frames(video_copy).images["observation.images.top"].get(np.array([0]))


def test_timestamp_outside_the_video_names_episode_key_and_time(video_copy: Path) -> None:
    path = video_copy / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    column = "videos/observation.images.top/from_timestamp"
    shifted = pa.array(
        [v + (5.0 if i == 2 else 0.0) for i, v in enumerate(table[column].to_pylist())]
    )
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, shifted), path)
    frames = read_frames(video_copy)
    frames.images["observation.images.top"].get(np.array([0, 9]))  # episodes 0 and 1 still fine
    with pytest.raises(
        VideoDecodeError, match=r"observation\.images\.top', episode 2, timestamp 6\.0"
    ):
        frames.images["observation.images.top"].get(np.array([10]))


def test_unknown_codec_is_refused_at_open(video_copy: Path) -> None:
    info = json.loads((video_copy / "meta/info.json").read_text())
    info["features"]["observation.images.wrist"]["info"]["video.codec"] = "vp99_nonexistent"
    (video_copy / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(VideoDecodeError, match=r"info\.json.*observation\.images\.wrist.*vp99"):
        read_frames(video_copy)


def test_writer_rejects_bad_video_input_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        LeRobotWriter(tmp_path / "odd", {"cam": FeatureSpec("image", (15, 24, 3))}, fps=10,
                      task="t", video=True)  # fmt: skip
    with pytest.raises(ValueError, match="video_settings"):
        LeRobotWriter(
            tmp_path / "x", FEATURES, fps=10, task="t", video_settings=VideoEncoderSettings()
        )
    with pytest.raises(ValueError, match="no such encoder"):
        VideoEncoderSettings(codec="not_a_codec")
    writer = LeRobotWriter(tmp_path / "ds", FEATURES, fps=10, task="t", video=True)
    bad = episodes([3])[0]
    bad["observation.image"] = bad["observation.image"][:, :8]
    with pytest.raises(ValueError, match=r"observation\.image"):
        writer.add_episode(bad)
    assert not (tmp_path / "ds").exists() and not (tmp_path / "odd").exists()


def test_column_pickles_without_open_files_for_spawned_workers(tmp_path: Path) -> None:
    import pickle

    root = write(tmp_path / "ds", episodes([8]))
    column = read_frames(root).images["observation.image"]
    assert isinstance(column, VideoColumn)
    first = column.get(np.array([5]))  # opens a container and fills the cache
    clone = pickle.loads(pickle.dumps(column))
    assert not clone._containers and not clone._cache
    np.testing.assert_array_equal(clone.get(np.array([5])), first)


def test_encoder_falls_back_to_h264_without_libsvtav1(monkeypatch: pytest.MonkeyPatch) -> None:
    import av

    real = av.codec.Codec

    def codec(name: str, mode: str = "r") -> object:
        if name == "libsvtav1":
            raise av.codec.codec.UnknownCodecError(name)
        return real(name, mode)

    monkeypatch.setattr(av.codec, "Codec", codec)
    settings = VideoEncoderSettings.default()
    assert settings.codec == "libx264"
    monkeypatch.undo()
    assert VideoEncoderSettings.default().codec == "libsvtav1"
