"""Datasets written by lerobot 0.6.1 itself, read with our code (issue #16).

Fixtures: `fixtures/lerobot/` from `fixtures/make_lerobot_fixtures.py` (3 episodes of 6 / 4 / 8
frames, two 32x48 cameras, state [3], action [2], two tasks), each stored as PNG-in-parquet
(`image`), AV1 video in one shared mp4 per camera (`video`), and AV1 video spread over one mp4
and one parquet file per episode (`video_split`); `items_*.npz` hold what lerobot's
`LeRobotDataset.__getitem__` returned (PyAV decoder) and `source.npz` what went in. Pinned:
- every numeric column and task index equals lerobot's item exactly; image-dataset pixels equal
  the source exactly (PNG is lossless);
- video pixels equal lerobot's decoded pixels exactly: both decode with FFmpeg's libdav1d
  (lerobot's PyAV 15 wheel, ours >= 18), and AV1 decoding is bit-exact by specification;
- our stats functions on the source arrays reproduce lerobot's `meta/stats.json`: q01..q99 of
  vector features exactly, image quantiles to 1e-8, mean/std to 1e-6 (images: std to 1e-4,
  measured 7.4e-5: lerobot forms E[x²] − mean² of 0..255 pixel values in float32; we count
  pixel levels exactly in float64);
- `VLADataset` with `normalization="quantiles"` maps q01 / q99 to -1 / 1 as lerobot's
  QUANTILES normaliser does (2·(x − q01)/(q99 − q01) − 1), to 1e-6.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_train.data import FeatureSpec, LeRobotWindowDataset, read_frames, read_stats
from vla_train.data.stats import QUANTILE_KEYS, feature_stats, merge_stats
from vla_train.data.video import VideoColumn
from vla_train.vla import TinyTokenizer, VLADataConfig, VLADataset

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot"
CAMERAS = ("observation.images.top", "observation.images.wrist")
LENGTHS = (6, 4, 8)
DATASETS = ("image", "video", "video_split")


def source_column(key: str) -> np.ndarray:
    source = np.load(FIXTURES / "source.npz")
    return np.concatenate([source[f"{e}/{key}"] for e in range(len(LENGTHS))])


@pytest.mark.parametrize("name", DATASETS)
def test_columns_and_frames_equal_lerobot_items(name: str) -> None:
    frames = read_frames(FIXTURES / name)
    assert frames.episodes == [0, 1, 2]
    assert [frames.episode_to[e] - frames.episode_from[e] for e in range(3)] == list(LENGTHS)
    kind = VideoColumn if name.startswith("video") else object
    assert all(isinstance(frames.images[c], kind) for c in CAMERAS)
    items = np.load(FIXTURES / f"items_{name}.npz")
    for i in items["indices"].tolist():
        for key in ("observation.state", "action", "timestamp", "task_index"):
            np.testing.assert_array_equal(
                frames.columns[key][i].reshape(-1), items[f"{i}/{key}"].reshape(-1), err_msg=key
            )
        for cam in CAMERAS:
            np.testing.assert_array_equal(
                frames.images[cam].get(np.array([i]))[0], items[f"{i}/{cam}"], err_msg=cam
            )


def test_image_dataset_pixels_equal_the_source_exactly() -> None:
    frames = read_frames(FIXTURES / "image")
    for cam in CAMERAS:
        np.testing.assert_array_equal(frames.images[cam].all(), source_column(cam))
    for key in ("observation.state", "action"):
        np.testing.assert_array_equal(frames.columns[key], source_column(key))


def test_video_datasets_layout_is_what_the_test_claims() -> None:
    """`video` shares one mp4 per camera (episodes at from_timestamp > 0); `video_split` has
    one file per episode — so both v3.0 addressing cases are exercised above."""
    shared = read_frames(FIXTURES / "video").images[CAMERAS[0]]
    split = read_frames(FIXTURES / "video_split").images[CAMERAS[0]]
    assert isinstance(shared, VideoColumn) and isinstance(split, VideoColumn)
    assert len(shared.paths) == 1 and len(split.paths) == 3
    assert len(list((FIXTURES / "video_split" / "data").rglob("*.parquet"))) == 3


def test_our_stats_reproduce_lerobots_stats_json() -> None:
    stats = json.loads((FIXTURES / "image" / "meta" / "stats.json").read_text())
    source = np.load(FIXTURES / "source.npz")
    specs = {
        "observation.state": FeatureSpec("float32", (3,)),
        "action": FeatureSpec("float32", (2,)),
        **{cam: FeatureSpec("image", (32, 48, 3)) for cam in CAMERAS},
    }
    for key, spec in specs.items():
        merged = merge_stats([feature_stats(source[f"{e}/{key}"], spec) for e in range(3)])
        reference = {k: np.asarray(v).reshape(np.shape(merged[k])) for k, v in stats[key].items()}
        for q in QUANTILE_KEYS:
            if spec.dtype == "image":
                np.testing.assert_allclose(merged[q], reference[q], rtol=0, atol=1e-8)
            else:
                np.testing.assert_array_equal(merged[q], reference[q], err_msg=f"{key} {q}")
        atol = 1e-4 if spec.dtype == "image" else 1e-6  # float32 E[x²] − mean² over 0..255
        for s in ("min", "max", "mean", "std"):
            np.testing.assert_allclose(merged[s], reference[s], rtol=1e-6, atol=atol, err_msg=s)
        assert merged["count"].tolist() == reference["count"].reshape(-1).tolist()


@pytest.mark.parametrize("name", ["image", "video"])
def test_vla_dataset_reads_lerobot_datasets_with_quantile_normalisation(name: str) -> None:
    config = VLADataConfig(str(FIXTURES / name), normalization="quantiles")
    ds = VLADataset(
        config, tokenizer=TinyTokenizer(), image_size=56, action_horizon=3, pad_dim=8,
        max_token_len=48, variant="pi05",
    )  # fmt: skip
    assert ds.camera_keys == CAMERAS
    assert ds.task(0) == "pick up the red cube" and ds.task(6) == "put the cube in the bowl"
    stats = read_stats(FIXTURES / name)["action"]
    q01, q99 = stats["q01"], stats["q99"]
    expected = 2.0 * (source_column("action")[:3] - q01) / (q99 - q01) - 1.0
    sample = ds[0]
    np.testing.assert_allclose(sample["actions"][:, :2].numpy(), expected, rtol=0, atol=1e-6)
    assert sample["images"].shape == (2, 3, 56, 56)
    assert float(sample["images"].min()) >= -1.0 and float(sample["images"].max()) <= 1.0
    np.testing.assert_allclose(
        ds.action_norm.normalize(np.stack([q01, q99])), [[-1, -1], [1, 1]], atol=1e-6
    )


def test_window_dataset_on_video_equals_image_dataset_up_to_codec() -> None:
    """Same windows (rows, padding) from both storages; pixels within AV1's loss of the PNG
    frames (CRF 30 on 32x48 frames with sharp edges: mean |Δ| measured 3.6 / 5.8 levels per
    camera, bound 8 / 255), and each video frame is nearest to its own source frame."""
    kwargs = {"keys": (*CAMERAS, "observation.state"), "n_obs_steps": 2, "horizon": 4,
              "n_action_steps": 2}  # fmt: skip
    image = LeRobotWindowDataset(FIXTURES / "image", **kwargs)  # type: ignore[arg-type]
    video = LeRobotWindowDataset(FIXTURES / "video", **kwargs)  # type: ignore[arg-type]
    assert len(image) == len(video)
    for i in range(len(image)):
        a, b = image[i], video[i]
        for key in ("observation.state", "action", "action_is_pad"):
            assert torch.equal(a[key], b[key])
        for cam in CAMERAS:
            assert float((a[cam] - b[cam]).abs().mean()) <= 8 / 255
    for cam in CAMERAS:
        source = source_column(cam).astype(np.float64)
        decoded = video.frames.images[cam].all().astype(np.float64)
        distance = np.abs(decoded[:, None] - source[None]).mean(axis=(2, 3, 4))  # [N, N]
        np.testing.assert_array_equal(distance.argmin(1), np.arange(len(source)))
