"""Pins the gym-pusht evaluation: env observations map onto the dataset keys, lock-step
batching of episodes gives exactly the per-episode results of one-at-a-time rollouts, metrics
follow gym-pusht's coverage (success = coverage > 0.95), and episodes stop at max_steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vla_train.eval import EvalResult, env_obs_to_frame, evaluate
from vla_train.eval.rollout import make_env

KEYS = ("observation.state", "observation.environment_state")


def test_obs_mapping_matches_the_recorded_dataset_keys() -> None:
    env = make_env("environment_state_agent_pos", 10)
    obs, _ = env.reset(seed=0)
    frame = env_obs_to_frame(obs, "environment_state_agent_pos")
    assert (
        frame["observation.state"].shape == (2,) and frame["observation.state"].dtype == np.float32
    )
    np.testing.assert_array_equal(frame["observation.state"], obs["agent_pos"].astype(np.float32))
    assert frame["observation.environment_state"].shape == (16,)
    env.close()
    env = make_env("pixels_agent_pos", 10)
    obs, _ = env.reset(seed=0)
    frame = env_obs_to_frame(obs, "pixels_agent_pos")
    img = frame["observation.image"]
    assert (
        img.shape == (3, 96, 96)
        and img.dtype == np.float32
        and 0.0 <= img.min() <= img.max() <= 1.0
    )
    np.testing.assert_allclose(
        img[:, 5, 7] * 255.0, obs["pixels"][5, 7].astype(np.float32), atol=1e-4
    )
    env.close()
    with pytest.raises(ValueError, match="obs_type"):
        env_obs_to_frame(obs, "keypoints")


def _chase_block(obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Deterministic, observation-dependent policy: walk from the agent towards the T's centre
    (mean of its keypoints) in 8 steps. Pushes the block, so coverage changes per seed."""
    agent = obs["observation.state"][:, -1]  # [B, 2]
    centre = obs["observation.environment_state"][:, -1].view(-1, 8, 2).mean(1)
    frac = torch.linspace(0.2, 1.2, 8).view(1, 8, 1)
    return {"action": agent[:, None] + frac * (centre - agent)[:, None]}


def _run(n_envs: int, **kw) -> EvalResult:
    return evaluate(
        _chase_block,
        obs_type="environment_state_agent_pos",
        obs_keys=KEYS,
        n_obs_steps=2,
        n_episodes=3,
        start_seed=100000,
        max_steps=40,
        n_envs=n_envs,
        **kw,
    )


def test_lockstep_batching_equals_one_episode_at_a_time(tmp_path: Path) -> None:
    one = _run(1)
    batched = _run(3, video_dir=tmp_path, n_videos=1, video_size=64)
    assert one.max_coverage == batched.max_coverage  # exact: same seeds, same actions
    assert one.episode_steps == batched.episode_steps == [40, 40, 40]
    assert one.success == batched.success
    assert len(set(one.max_coverage)) > 1  # episodes differ, so a mix-up would show
    assert batched.policy_calls == 5 and one.policy_calls == 15  # ceil(40 / 8) per episode group
    assert [Path(v).name for v in batched.videos] == ["episode_100000.gif"]
    assert Path(batched.videos[0]).stat().st_size > 0


def test_metrics_follow_gym_pusht_coverage() -> None:
    # Reference: an independent single-env loop with gym-pusht's own info["coverage"].
    env = make_env("environment_state_agent_pos", 40)
    expected = []
    for seed in (100000, 100001, 100002):
        obs, info = env.reset(seed=seed)
        hist = [env_obs_to_frame(obs, "environment_state_agent_pos")] * 2
        best, steps = 0.0, 0
        while steps < 40:
            batch = {k: torch.from_numpy(np.stack([f[k] for f in hist]))[None] for k in KEYS}
            for a in _chase_block(batch)["action"][0].numpy():
                obs, _, term, trunc, info = env.step(a)
                steps += 1
                hist = [hist[-1], env_obs_to_frame(obs, "environment_state_agent_pos")]
                best = max(best, info["coverage"])
                if term or trunc or steps >= 40:
                    break
            if term or trunc:
                break
        expected.append(best)
    env.close()
    res = _run(2)
    np.testing.assert_allclose(res.max_coverage, expected, rtol=0, atol=0)
    assert res.mean_max_coverage == pytest.approx(float(np.mean(expected)))
    assert res.success == [c > 0.95 for c in expected]
    assert res.mean_score == pytest.approx(float(np.mean([min(1.0, c / 0.95) for c in expected])))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="n_episodes"):
        evaluate(
            _chase_block,
            obs_type="environment_state_agent_pos",
            obs_keys=KEYS,
            n_obs_steps=2,
            n_episodes=0,
        )
    with pytest.raises(KeyError, match=r"observation\.image"):
        evaluate(
            _chase_block,
            obs_type="environment_state_agent_pos",
            obs_keys=("observation.image",),
            n_obs_steps=2,
            n_episodes=1,
            max_steps=8,
        )
