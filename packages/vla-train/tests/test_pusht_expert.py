"""Pins the scripted PushT expert: the cloned simulator predicts the real env (measured max
1.3e-3 px over a ~35-step primitive; asserted < 0.05 px), the SE(2) keypoint error is exact
against hand-computed values, approach paths keep the agent off the T, and whole episodes
succeed by gym-pusht's own `is_success` with bounded, deterministic actions."""

from __future__ import annotations

import numpy as np
import pytest

from vla_train.pusht import (
    ExpertConfig,
    PushTExpert,
    PushTSim,
    make_env,
    pose_error,
    run_expert_episode,
    snapshot,
)
from vla_train.pusht.expert import T_KEYPOINTS, approach_path, world_polygon
from vla_train.pusht.sim import AGENT_RADIUS, GOAL_POSE

FAST_SEED = 100_003  # solved in ~60 steps


def test_pose_error_is_rms_corner_distance() -> None:
    assert pose_error(GOAL_POSE) == 0.0
    shifted = GOAL_POSE + np.array([3.0, -4.0, 0.0])
    assert pose_error(shifted) == pytest.approx(5.0, abs=1e-12)
    # A rotation by pi about the body origin moves corner p to -p: distance 2|p|.
    flipped = GOAL_POSE + np.array([0.0, 0.0, np.pi])
    expected = np.sqrt(np.mean(np.sum((2 * T_KEYPOINTS) ** 2, axis=1)))
    assert pose_error(flipped) == pytest.approx(expected, rel=1e-12)


def test_keypoints_match_gym_pusht() -> None:
    env = make_env()
    obs, _ = env.reset(seed=5)
    pose = snapshot(env).block_pose
    c, s = np.cos(pose[2]), np.sin(pose[2])
    ours = T_KEYPOINTS @ np.array([[c, s], [-s, c]]) + pose[:2]  # row-vector form of R @ p
    np.testing.assert_allclose(ours.reshape(-1), obs["environment_state"], atol=1e-9)


@pytest.mark.parametrize("seed", [0, 2, 7])
def test_cloned_sim_predicts_the_env(seed: int) -> None:
    env = make_env()
    env.reset(seed=seed)
    expert = PushTExpert()
    primitive = expert.plan(snapshot(env))
    for target in primitive.targets:
        env.step(target)
    actual = snapshot(env)
    np.testing.assert_allclose(actual.block_pose, primitive.predicted.block_pose, atol=0.05)
    np.testing.assert_allclose(actual.agent_pos, primitive.predicted.agent_pos, atol=0.05)
    # The primitive moved the block (it is not a no-op that trivially "matches").
    assert np.abs(actual.block_pose - snapshot_after_reset(seed).block_pose).max() > 1.0


def snapshot_after_reset(seed: int):
    env = make_env()
    env.reset(seed=seed)
    return snapshot(env)


def test_sim_load_save_round_trip() -> None:
    state = snapshot_after_reset(3)
    sim = PushTSim()
    sim.load(state)
    assert sim.save() == state


def test_approach_path_keeps_the_agent_off_the_block() -> None:
    pose = np.array([256.0, 256.0, 0.3])
    block = world_polygon(pose)
    config = ExpertConfig()
    start = np.array([256.0, 450.0])  # below the stem
    goal = np.array([256.0, 256.0]) + np.array([np.sin(0.3), -np.cos(0.3)]) * 30  # above the bar
    path = approach_path(start, goal, pose, config)
    assert path is not None and len(path) >= 2  # a detour, not the straight line through the T
    import shapely.geometry as sg

    line = sg.LineString([start, *path])
    assert line.distance(block) >= AGENT_RADIUS + config.contact_gap - 0.5
    np.testing.assert_allclose(path[-1], goal)


def test_expert_episode_succeeds_smoothly_and_deterministically() -> None:
    config = ExpertConfig()
    first = run_expert_episode(FAST_SEED, image=False, config=config)
    assert first.success and first.max_coverage > 0.95
    assert bool(first.frames["next.success"][-1]) and bool(first.frames["next.done"][-1])
    assert not first.frames["next.done"][:-1].any()
    steps = np.linalg.norm(np.diff(first.frames["action"], axis=0), axis=1)
    # Within a plan a target moves at most `approach_speed`; a replan starts from the PD lead
    # point (agent + 0.2 s x velocity), which sits within half a step of the last target.
    replans = np.flatnonzero(first.frames["expert.replanned"][1:])
    within = np.delete(steps, replans)
    assert within.max() <= config.approach_speed + 1e-3
    assert steps.max() <= 1.5 * config.approach_speed
    assert first.frames["expert.replanned"][0] and first.frames["expert.replanned"][::8].all()
    assert first.frames["observation.state"].shape == (first.length, 2)
    assert first.frames["observation.environment_state"].shape == (first.length, 16)
    again = run_expert_episode(FAST_SEED, image=False, config=config)
    np.testing.assert_array_equal(again.frames["action"], first.frames["action"])


def test_action_noise_perturbs_execution_but_not_the_labels() -> None:
    """DART-style demos: the env receives target + noise, the dataset records the clean target.
    Replaying the recorded (clean) actions therefore must NOT reproduce the noisy trajectory,
    while replaying clean + the same seeded noise must reproduce it exactly."""
    clean = run_expert_episode(FAST_SEED, image=False)
    noisy = run_expert_episode(FAST_SEED, image=False, action_noise=4.0)
    assert noisy.success
    again = run_expert_episode(FAST_SEED, image=False, action_noise=4.0)
    np.testing.assert_array_equal(again.frames["action"], noisy.frames["action"])  # seeded
    n = min(clean.length, noisy.length)
    assert not np.array_equal(
        clean.frames["observation.state"][:n], noisy.frames["observation.state"][:n]
    )
    rng = np.random.default_rng(FAST_SEED)  # the episode's noise stream
    env = make_env()
    obs, _ = env.reset(seed=FAST_SEED)
    for t, action in enumerate(noisy.frames["action"]):
        np.testing.assert_array_equal(
            np.float32(obs["agent_pos"]), noisy.frames["observation.state"][t]
        )
        executed = action + rng.normal(0.0, 4.0, 2).astype(np.float32)
        obs, *_ = env.step(executed)
    env.close()
    # labels are the expert's own bounded-speed targets, not the jittery executed actions
    steps = np.linalg.norm(np.diff(noisy.frames["action"], axis=0), axis=1)
    within_plans = np.delete(steps, np.flatnonzero(noisy.frames["expert.replanned"][1:]))
    assert within_plans.max() <= ExpertConfig().approach_speed + 1e-3
    with pytest.raises(ValueError, match="action_noise"):
        run_expert_episode(FAST_SEED, image=False, action_noise=-1.0)


def test_expert_config_validates() -> None:
    with pytest.raises(ValueError, match="push_speed"):
        ExpertConfig(push_speed=0.0)
    with pytest.raises(ValueError, match="top_k"):
        ExpertConfig(top_k=0)
