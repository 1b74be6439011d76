"""Pins the analytic PushT controller: its contact choice against the closed-form optimum of the
quasi-static push model, determinism and time-consistency of its labels (the continuation of a
chunk from any of its states is the chunk a fresh call gives there), whole episodes solved by
gym-pusht's own `is_success`, and clear errors for bad knobs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vla_train.config import TaskConfig
from vla_train.pusht import make_env, run_expert_episode, snapshot
from vla_train.pusht.controller import (
    T_COG,
    T_INERTIA,
    ControllerConfig,
    PushController,
    desired_twist,
    make_expert,
)
from vla_train.pusht.expert import ExpertConfig, rotation
from vla_train.pusht.sim import GOAL_POSE

SEEDS = (0, 1, 2)


def test_desired_twist_is_the_pose_error_for_small_errors() -> None:
    d, w = desired_twist(np.array([GOAL_POSE[0] - 3.0, GOAL_POSE[1], GOAL_POSE[2] - 0.01]))
    # The cog's displacement in the T's frame: 3 px along world x, seen from a T turned by
    # ~pi/4, plus the cog's move when the T turns 0.01 rad about its origin.
    angle = GOAL_POSE[2] - 0.01
    expected = np.array([math.cos(angle), -math.sin(angle)]) * 3.0
    expected += rotation(0.01) @ T_COG - T_COG
    np.testing.assert_allclose(d, expected, atol=1e-3)
    assert w == pytest.approx(0.01, rel=0.02)
    # Upside down: the rotation term fades (the corner-error gradient), it does not flip sign.
    _, w_flip = desired_twist(np.array([*GOAL_POSE[:2], GOAL_POSE[2] + math.pi - 0.01]))
    assert abs(w_flip) < 0.02


def test_best_contact_matches_the_closed_form_optimum() -> None:
    """On the bar's bottom edge (push +y) the cosine (n.d + k w) / sqrt(1 + k^2/I) peaks at
    k* = I w / (n.d); a brute-force scan over the edge must agree."""
    controller = PushController()
    d, w = np.array([0.0, 20.0]), 0.004
    score, s, gain = controller._best_contact(0, d, w)
    a, u, n, lo, hi, k0, k1 = controller._edges[0]
    grid = np.linspace(lo, hi, 20001)
    k = k0 + (k1 - k0) * (grid - lo) / (hi - lo)
    scores = (n @ d + k * w) / np.sqrt(1 + k * k / T_INERTIA)
    assert score == pytest.approx(scores.max(), rel=1e-6)
    assert s == pytest.approx(grid[scores.argmax()], abs=0.01)
    # k* = I w / (n.d) = 3000 * 0.004 / 20 = 0.6 px of lever arm (k = x on this edge).
    assert (a + s * u)[0] == pytest.approx(0.6, abs=0.01)
    assert gain == pytest.approx(20.0 + 0.6 * 0.004)


def test_labels_are_a_deterministic_and_time_consistent_function_of_the_state() -> None:
    env = make_env()
    env.reset(seed=SEEDS[0])
    state = snapshot(env)
    env.close()
    a, b = PushController(), PushController()
    np.testing.assert_array_equal(a.act(state), b.act(state))
    chunk, states, fresh = a.chunk_with_states(state, 16)
    assert chunk.shape == (16, 2) and fresh.all()
    for k in (1, 5, 11):
        rest, _, _ = b.chunk_with_states(states[k], 16 - k)
        np.testing.assert_array_equal(rest[0], chunk[k])  # the same state, the same target
        # Later targets differ only by pymunk's warm-started contact impulses, which a state
        # snapshot does not carry (measured <= 0.012 px).
        np.testing.assert_allclose(rest, chunk[k:], atol=0.05)


@pytest.mark.parametrize("seed", SEEDS)
def test_controller_solves_episodes(seed: int) -> None:
    episode = run_expert_episode(seed, image=False, expert="controller")
    assert episode.success and episode.max_coverage > 0.95
    assert episode.frames["expert.replanned"].all()  # every step is a decision
    steps = np.linalg.norm(np.diff(episode.frames["action"], axis=0), axis=1)
    assert steps.max() < 3 * ControllerConfig().approach_speed


def test_bad_knobs_are_named() -> None:
    with pytest.raises(ValueError, match="approach_speed"):
        ControllerConfig(approach_speed=0.0)
    with pytest.raises(ValueError, match="max_push_step"):
        ControllerConfig(min_push_step=5.0, max_push_step=1.0)
    with pytest.raises(ValueError, match="stick"):
        ControllerConfig(stick=-1.0)
    with pytest.raises(ValueError, match=r"task\.expert='oracle'"):
        make_expert("oracle")
    with pytest.raises(ValueError, match="configures the planner"):
        make_expert("controller", ExpertConfig())
    with pytest.raises(ValueError, match=r"task\.expert"):
        TaskConfig(
            name="pusht_lowdim",
            env_obs_type="environment_state_agent_pos",
            lowdim_keys=("observation.state",),
            image_keys=(),
            image_shape=(3, 96, 96),
            crop_shape=None,
            action_dim=2,
            horizon=16,
            n_obs_steps=2,
            n_action_steps=8,
            expert="oracle",
        )
