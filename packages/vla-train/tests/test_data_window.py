"""Pins `LeRobotWindowDataset` against an independent re-statement of diffusion_policy's
`create_indices` + `sample_sequence` (edge frames repeated), exactly (integer-valued data), plus
shapes/dtypes of the trainer-facing interface and the stats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vla_train.data import FeatureSpec, LeRobotWindowDataset, LeRobotWriter, read_stats

LENGTHS = [3, 20, 9]


def make_dataset(root: Path) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    features = {
        "observation.state": FeatureSpec("float32", (2,)),
        "observation.environment_state": FeatureSpec("float32", (16,)),
        "observation.image": FeatureSpec("image", (96, 96, 3)),
        "action": FeatureSpec("float32", (2,)),
    }
    writer = LeRobotWriter(root, features, fps=10, task="t")
    episodes = []
    for ep, n in enumerate(LENGTHS):
        t = np.arange(n, dtype=np.float32)
        data = {
            # value encodes (episode, time) so a wrong row is visible in the diff
            "observation.state": np.stack([np.full(n, ep, np.float32), t], 1),
            "observation.environment_state": np.repeat(t[:, None], 16, 1) + 100 * ep,
            "observation.image": rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8),
            "action": np.stack([np.full(n, ep, np.float32), 1000 + t], 1),
        }
        writer.add_episode(data)
        episodes.append(data)
    writer.finalize()
    return episodes


def reference_windows(lengths, horizon, pad_before, pad_after):
    """diffusion_policy `create_indices`: (buffer_start, buffer_end, sample_start, sample_end)."""
    out, episode_start = [], 0
    for n in lengths:
        for idx in range(-pad_before, n - horizon + pad_after + 1):
            buffer_start = max(idx, 0) + episode_start
            buffer_end = min(idx + horizon, n) + episode_start
            sample_start = buffer_start - (idx + episode_start)
            sample_end = horizon - ((idx + horizon + episode_start) - buffer_end)
            out.append((buffer_start, buffer_end, sample_start, sample_end))
        episode_start += n
    return out


def reference_sequence(values, window, horizon):
    """diffusion_policy `sample_sequence`: copy the buffer slice, fill edges with its ends."""
    buffer_start, buffer_end, sample_start, sample_end = window
    sample = values[buffer_start:buffer_end]
    data = np.zeros((horizon, *values.shape[1:]), dtype=values.dtype)
    data[:sample_start] = sample[0]
    data[sample_end:] = sample[-1]
    data[sample_start:sample_end] = sample
    is_pad = np.ones(horizon, dtype=bool)
    is_pad[sample_start:sample_end] = False
    return data, is_pad


@pytest.mark.parametrize(("n_obs", "horizon", "n_action"), [(2, 16, 8), (1, 4, 4), (3, 5, 2)])
def test_windows_match_diffusion_policy_sampler(
    tmp_path: Path, n_obs: int, horizon: int, n_action: int
) -> None:
    episodes = make_dataset(tmp_path / "ds")
    ds = LeRobotWindowDataset(
        tmp_path / "ds", n_obs_steps=n_obs, horizon=horizon, n_action_steps=n_action
    )
    windows = reference_windows(LENGTHS, horizon, n_obs - 1, n_action - 1)
    assert len(ds) == len(windows)
    cat = {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}
    for i, window in enumerate(windows):
        sample = ds[i]
        action, is_pad = reference_sequence(cat["action"], window, horizon)
        torch.testing.assert_close(sample["action"], torch.from_numpy(action), rtol=0, atol=0)
        assert sample["action_is_pad"].tolist() == is_pad.tolist()
        for key in ("observation.state", "observation.environment_state"):
            obs, _ = reference_sequence(cat[key], window, horizon)
            torch.testing.assert_close(sample[key], torch.from_numpy(obs[:n_obs]), rtol=0, atol=0)
        img, _ = reference_sequence(cat["observation.image"], window, horizon)
        expected = torch.from_numpy(img[:n_obs]).permute(0, 3, 1, 2).float() / 255
        torch.testing.assert_close(sample["observation.image"], expected, rtol=0, atol=0)


def test_interface_shapes_episode_subset_and_stats(tmp_path: Path) -> None:
    make_dataset(tmp_path / "ds")
    ds = LeRobotWindowDataset(tmp_path / "ds", n_obs_steps=2, horizon=16, episodes=[1])
    # episode 1 (20 frames): starts -1 .. 20 - 16 + 7
    assert len(ds) == 20 - 16 + 7 + 1 + 1
    sample = ds[0]
    assert sample["observation.state"].shape == (2, 2)
    assert sample["observation.environment_state"].shape == (2, 16)
    assert sample["observation.image"].shape == (2, 3, 96, 96)
    assert sample["observation.image"].dtype == torch.float32
    assert sample["observation.image"].min() >= 0 and sample["observation.image"].max() <= 1
    assert sample["action"].shape == (16, 2) and sample["action"].dtype == torch.float32
    assert sample["action_is_pad"].dtype == torch.bool
    assert sample["action_is_pad"].tolist() == [True] + [False] * 15
    assert torch.all(sample["observation.state"][:, 0] == 1)  # only episode 1 rows
    assert torch.equal(ds[-1]["action"][-1], torch.tensor([1.0, 1019.0]))

    preloaded = LeRobotWindowDataset(tmp_path / "ds", n_obs_steps=2, horizon=16).preload()
    torch.testing.assert_close(preloaded[3], LeRobotWindowDataset(tmp_path / "ds")[3])

    stats = ds.stats()
    assert set(stats) == {"observation.state", "observation.environment_state", "action"}
    raw = read_stats(tmp_path / "ds")
    for key in stats:
        assert set(stats[key]) == {"min", "max", "mean", "std"}
        torch.testing.assert_close(stats[key]["mean"], torch.tensor(raw[key]["mean"]).float())
    assert stats["action"]["max"].tolist() == [2.0, 1019.0]


def test_lowdim_only_keys_and_bad_arguments(tmp_path: Path) -> None:
    make_dataset(tmp_path / "ds")
    ds = LeRobotWindowDataset(
        tmp_path / "ds", keys=("observation.state",), horizon=4, n_action_steps=4
    )
    assert set(ds[0]) == {"observation.state", "action", "action_is_pad"}
    with pytest.raises(KeyError, match="episodes"):
        LeRobotWindowDataset(tmp_path / "ds", episodes=[7])
    with pytest.raises(KeyError, match=r"observation\.velocity"):
        LeRobotWindowDataset(tmp_path / "ds", keys=("observation.velocity",))
    with pytest.raises(ValueError, match="n_obs_steps"):
        LeRobotWindowDataset(tmp_path / "ds", n_obs_steps=5, horizon=4, n_action_steps=4)
    with pytest.raises(ValueError, match="pad_after"):
        LeRobotWindowDataset(tmp_path / "ds", horizon=4, pad_after=4)
    with pytest.raises(IndexError):
        ds[len(ds)]
