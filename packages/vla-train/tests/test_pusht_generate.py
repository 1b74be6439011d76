"""Pins dataset generation end to end: a 3-episode image dataset generated through
`ensure_default_dataset` (cache dir from VLA_CACHE_DIR), read back exactly by the LeRobot reader
and the windowed dataset, cached on the second call; resuming reuses saved seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_train.data import LeRobotWindowDataset, read_frames, read_info
from vla_train.pusht import default_dataset_path, ensure_default_dataset, generate_dataset
from vla_train.pusht.generate import GENERATION_META, _episode_path, _run_and_save


def test_default_dataset_generates_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLA_CACHE_DIR", str(tmp_path / "cache"))
    expected = default_dataset_path(num_episodes=3, seed=100_001, image=True)
    assert expected.is_relative_to(tmp_path / "cache" / "pusht")
    noisy = default_dataset_path(num_episodes=3, seed=100_001, image=True, action_noise=6.0)
    assert noisy != expected and noisy.name.endswith("-noise6")  # noise is part of the cache key
    root = ensure_default_dataset(
        num_episodes=3, seed=100_001, image=True, workers=1, progress=False
    )
    assert root == expected

    info = read_info(root)
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 3
    for key in ("observation.state", "observation.environment_state", "observation.image",
                "action", "next.reward", "next.success", "next.done", "timestamp", "index"):  # fmt: skip
        assert key in info["features"], key
    summary = json.loads((root / GENERATION_META).read_text())
    seeds = summary["episode_seeds"]
    assert len(seeds) == 3 and seeds == sorted(seeds) and seeds[0] >= 100_001
    assert 0 < summary["success_rate"] <= 1

    frames = read_frames(root)
    for ep in frames.episodes:
        s, e = frames.episode_from[ep], frames.episode_to[ep]
        success = frames.columns["next.success"][s:e, 0]
        assert success[-1] and not success[:-1].any()  # every kept episode ends on success
        # the recorded state is the agent position the expert's actions are driving
        images = frames.images["observation.image"].get(np.arange(s, e))
        assert images.shape == (e - s, 96, 96, 3) and images.dtype == np.uint8
        assert len(np.unique(images.reshape(-1, 3), axis=0)) > 3  # rendered, not blank

    ds = LeRobotWindowDataset(root, n_obs_steps=2, horizon=16)
    sample = ds[len(ds) // 2]
    assert sample["observation.image"].shape == (2, 3, 96, 96)
    assert sample["observation.environment_state"].shape == (2, 16)
    assert sample["action"].shape == (16, 2)
    stats = ds.stats()
    assert torch.all(stats["action"]["min"] >= 0) and torch.all(stats["action"]["max"] <= 512)

    mtime = (root / "meta/info.json").stat().st_mtime_ns
    assert ensure_default_dataset(num_episodes=3, seed=100_001, image=True) == root
    assert (root / "meta/info.json").stat().st_mtime_ns == mtime  # cached, not regenerated
    assert not root.with_name(root.name + ".episodes").exists()  # scratch cleaned up


def test_controller_dataset_has_its_own_cache_key_and_decides_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLA_CACHE_DIR", str(tmp_path / "cache"))
    planner = default_dataset_path(num_episodes=2, seed=0, image=False)
    root = ensure_default_dataset(
        num_episodes=2, seed=0, image=False, workers=1, progress=False, expert="controller"
    )
    assert root != planner and root.name.startswith("controller-v1-lowdim-n2")
    assert json.loads((root / GENERATION_META).read_text())["expert_version"] == "controller-v1"
    frames = read_frames(root)
    assert frames.columns["expert.replanned"].all()  # every window starts at a decision
    assert frames.columns["next.success"][frames.episode_to[frames.episodes[-1]] - 1, 0]


def test_generation_resumes_from_saved_seeds(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    scratch = out.with_name("ds.episodes")
    scratch.mkdir()
    seed = 100_003
    first = _run_and_save((seed, False, str(scratch), 0.0, "planner"))
    assert first.success
    # Mark the saved seed so we can tell it was reused rather than recomputed.
    with np.load(_episode_path(scratch, seed)) as z:
        saved = dict(z)
    saved["planning_seconds"] = np.float64(1234.5)
    np.savez(_episode_path(scratch, seed), **saved)
    generate_dataset(out, num_episodes=1, seed=seed, image=False, progress=False)
    summary = json.loads((out / GENERATION_META).read_text())
    assert summary["episode_seeds"] == [seed]
    assert summary["mean_planning_seconds"] == pytest.approx(1234.5)
    assert "observation.image" not in read_info(out)["features"]
    with pytest.raises(FileExistsError):
        generate_dataset(out, num_episodes=1, seed=seed, image=False, progress=False)


def test_cli_in_parallel_matches_serial_generation(tmp_path: Path, capsys) -> None:
    from vla_train.pusht.__main__ import main

    args = ["--num-episodes", "2", "--seed", "100002", "--no-image"]
    assert main(["--out", str(tmp_path / "par"), *args, "--workers", "2"]) == 0
    assert "2 episodes kept" in capsys.readouterr().out
    generate_dataset(tmp_path / "ser", 2, seed=100_002, image=False, workers=1, progress=False)
    par, ser = read_frames(tmp_path / "par"), read_frames(tmp_path / "ser")
    for key in ("action", "observation.state", "observation.environment_state", "index"):
        np.testing.assert_array_equal(par.columns[key], ser.columns[key])


def test_render_writes_a_strip_png(tmp_path: Path) -> None:
    from PIL import Image

    from vla_train.pusht.render import main

    assert main(["--seed", "100003", "--out", str(tmp_path / "strip.png"), "--size", "96",
                 "--frames", "4", "--gif", str(tmp_path / "ep.gif")]) == 0  # fmt: skip
    strip = Image.open(tmp_path / "strip.png")
    assert strip.size == (4 * 96 + 3 * 4, 96 + 16)
    gif = Image.open(tmp_path / "ep.gif")
    assert gif.n_frames > 10
    with pytest.raises(ValueError, match="96"):
        main(["--seed", "0", "--size", "64", "--out", str(tmp_path / "x.png")])
