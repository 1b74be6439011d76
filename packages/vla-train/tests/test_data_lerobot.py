"""Pins the LeRobot v3.0 writer and the v3.0 / v2.1 reader: exact round trip of every column
(images lossless through PNG), the v3.0 file layout and metadata, stats equal to numpy over all
frames (rtol 1e-12), and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vla_train.data import FeatureSpec, LeRobotWriter, read_frames, read_stats

FEATURES = {
    "observation.state": FeatureSpec("float32", (2,), ("x", "y")),
    "observation.environment_state": FeatureSpec("float32", (16,)),
    "observation.image": FeatureSpec("image", (8, 10, 3)),
    "action": FeatureSpec("float32", (2,), ("x", "y")),
    "next.reward": FeatureSpec("float32", (1,)),
    "next.success": FeatureSpec("bool", (1,)),
}


def random_episodes(rng: np.random.Generator, lengths: list[int]) -> list[dict[str, np.ndarray]]:
    return [
        {
            "observation.state": rng.uniform(0, 512, (n, 2)).astype(np.float32),
            "observation.environment_state": rng.uniform(0, 512, (n, 16)).astype(np.float32),
            "observation.image": rng.integers(0, 256, (n, 8, 10, 3), dtype=np.uint8),
            "action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
            "next.reward": rng.uniform(0, 1, n).astype(np.float32),
            "next.success": np.arange(n) == n - 1,
        }
        for n in lengths
    ]


def write(root: Path, episodes: list[dict[str, np.ndarray]]) -> Path:
    writer = LeRobotWriter(root, FEATURES, fps=10, task="Push the T onto the target.")
    for ep in episodes:
        writer.add_episode(ep)
    return writer.finalize()


def test_round_trip_is_exact_and_layout_is_v3(tmp_path: Path) -> None:
    lengths = [5, 1, 9]
    episodes = random_episodes(np.random.default_rng(0), lengths)
    root = write(tmp_path / "ds", episodes)

    for rel in ("meta/info.json", "meta/stats.json", "meta/tasks.parquet"):
        assert (root / rel).is_file(), rel
    assert (root / "meta/episodes/chunk-000/file-000.parquet").is_file()
    assert (root / "data/chunk-000/file-000.parquet").is_file()
    assert not (tmp_path / "ds.partial").exists()

    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["fps"]) == (3, 15, 10)
    assert info["features"]["observation.image"]["dtype"] == "image"
    assert info["features"]["observation.image"]["info"]["encoding"] == "png"
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in info["features"]

    frames = read_frames(root)
    assert frames.episodes == [0, 1, 2]
    offset = 0
    for ep, (n, data) in enumerate(zip(lengths, episodes)):
        s, e = frames.episode_from[ep], frames.episode_to[ep]
        assert (s, e) == (offset, offset + n)
        for key, spec in FEATURES.items():
            if spec.dtype == "image":
                np.testing.assert_array_equal(frames.images[key].get(np.arange(s, e)), data[key])
            else:
                got = frames.columns[key][s:e]
                assert got.dtype == np.dtype(spec.dtype)
                np.testing.assert_array_equal(got, data[key].reshape(n, *spec.shape))
        np.testing.assert_array_equal(frames.columns["frame_index"][s:e, 0], np.arange(n))
        np.testing.assert_array_equal(frames.columns["index"][s:e, 0], np.arange(s, e))
        np.testing.assert_allclose(frames.columns["timestamp"][s:e, 0], np.arange(n) / 10)
        offset += n

    meta = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [m["length"] for m in meta] == lengths
    assert [m["dataset_to_index"] - m["dataset_from_index"] for m in meta] == lengths
    assert meta[2]["tasks"] == ["Push the T onto the target."]
    np.testing.assert_allclose(meta[2]["stats/action/mean"], episodes[2]["action"].mean(0), 1e-6)

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["Push the T onto the target."]
    assert tasks.column("task_index").to_pylist() == [0]


def test_stats_match_numpy_over_all_frames(tmp_path: Path) -> None:
    episodes = random_episodes(np.random.default_rng(1), [7, 3, 12])
    stats = read_stats(write(tmp_path / "ds", episodes))
    for key in ("observation.state", "observation.environment_state", "action"):
        x = np.concatenate([e[key] for e in episodes]).astype(np.float64)
        np.testing.assert_allclose(stats[key]["mean"], x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats[key]["std"], x.std(0), rtol=1e-9)
        np.testing.assert_array_equal(stats[key]["min"], x.min(0))
        np.testing.assert_array_equal(stats[key]["max"], x.max(0))
        assert stats[key]["count"].tolist() == [22]
    img = np.concatenate([e["observation.image"] for e in episodes]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(stats["observation.image"]["mean"].reshape(3), img.mean(0), 1e-12)
    assert stats["observation.image"]["std"].shape == (3, 1, 1)


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    writer = LeRobotWriter(tmp_path / "ds", FEATURES, fps=10, task="t")
    good = random_episodes(np.random.default_rng(2), [4])[0]
    with pytest.raises(KeyError, match="missing"):
        writer.add_episode({k: v for k, v in good.items() if k != "action"})
    with pytest.raises(ValueError, match="'action' has shape"):
        writer.add_episode({**good, "action": good["action"][:, :1]})
    with pytest.raises(ValueError, match="no episode"):
        writer.finalize()
    with pytest.raises(ValueError, match="collide"):
        LeRobotWriter(tmp_path / "x", {"index": FeatureSpec("int64", (1,))}, fps=10, task="t")
    with pytest.raises(ValueError, match="dtype"):
        FeatureSpec("float16", (2,))
    write(tmp_path / "done", [good])
    with pytest.raises(FileExistsError):
        LeRobotWriter(tmp_path / "done", FEATURES, fps=10, task="t")


def test_reader_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"info\.json"):
        read_frames(tmp_path)
    root = write(tmp_path / "ds", random_episodes(np.random.default_rng(3), [3]))
    with pytest.raises(KeyError, match=r"observation\.depth"):
        read_frames(root, keys=("observation.depth",))
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.image"]["dtype"] = "video"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(KeyError, match=r"video feature 'observation\.image' needs columns"):
        read_frames(root)  # declared as video, but the episodes metadata has no video columns


def write_v21(root: Path, episodes: list[dict[str, np.ndarray]]) -> None:
    """A LeRobot v2.1 folder: one parquet per episode, uint8 image arrays, jsonl metadata."""
    features = {
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "observation.image": {"dtype": "uint8", "shape": [8, 10, 3], "names": None},
        "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    (root / "meta").mkdir(parents=True)
    info = {"codebase_version": "v2.1", "fps": 10, "features": features}
    (root / "meta/info.json").write_text(json.dumps(info))
    offset, stats_lines = 0, []
    for ep, data in enumerate(episodes):
        n = len(data["action"])
        img = data["observation.image"].reshape(n, -1)
        table = pa.table(
            {
                "observation.state": pa.array(data["observation.state"].tolist()),
                "observation.image": pa.FixedSizeListArray.from_arrays(
                    pa.array(img.reshape(-1), pa.uint8()), img.shape[1]
                ),
                "action": pa.array(data["action"].tolist(), pa.list_(pa.float32())),
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
        a = data["action"].astype(np.float64)
        st = {"min": a.min(0), "max": a.max(0), "mean": a.mean(0), "std": a.std(0), "count": [n]}
        stats_lines.append(
            json.dumps(
                {"episode_index": ep, "stats": {"action": {k: list(v) for k, v in st.items()}}}
            )
        )
        offset += n
    (root / "meta/episodes_stats.jsonl").write_text("\n".join(stats_lines) + "\n")


def test_reads_v21_per_episode_files(tmp_path: Path) -> None:
    episodes = random_episodes(np.random.default_rng(4), [4, 6])
    # Episode files are read in name order but frames are ordered by the global index.
    write_v21(tmp_path / "v21", episodes)
    frames = read_frames(tmp_path / "v21")
    assert frames.episodes == [0, 1]
    got = frames.images["observation.image"].all()
    np.testing.assert_array_equal(got, np.concatenate([e["observation.image"] for e in episodes]))
    np.testing.assert_array_equal(
        frames.columns["observation.state"],
        np.concatenate([e["observation.state"] for e in episodes]),
    )
    stats = read_stats(tmp_path / "v21")
    actions = np.concatenate([e["action"] for e in episodes]).astype(np.float64)
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0), rtol=1e-9)


def test_pre_encoded_png_bytes_are_stored_as_given(tmp_path: Path) -> None:
    from vla_train.data.writer import encode_png

    episode = random_episodes(np.random.default_rng(5), [4])[0]
    writer = LeRobotWriter(tmp_path / "ds", FEATURES, fps=10, task="t")
    blobs = [encode_png(f) for f in episode["observation.image"]]
    writer.add_episode(episode, encoded_images={"observation.image": blobs})
    with pytest.raises(ValueError, match="frames"):
        writer.add_episode(episode, encoded_images={"observation.image": blobs[:2]})
    with pytest.raises(KeyError, match="not an image"):
        writer.add_episode(episode, encoded_images={"action": blobs})
    root = writer.finalize()
    table = pq.read_table(root / "data/chunk-000/file-000.parquet", columns=["observation.image"])
    assert table.column("observation.image").combine_chunks().field("bytes").to_pylist() == blobs
    frames = read_frames(root)
    np.testing.assert_array_equal(
        frames.images["observation.image"].all(), episode["observation.image"]
    )
