"""Expert-in-the-loop rounds: labels are a function of the state, a round adds exactly the
visited states with the expert's labels, bad knobs fail at construction, and a run resumed
after a round (even with that round's data lost) reproduces the uninterrupted run bit for bit."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vla_train._testing import load_config, write_random_walk_dataset
from vla_train.data import LeRobotWindowDataset, read_frames
from vla_train.pusht.controller import PushController
from vla_train.pusht.dagger import DaggerConfig, collect_round, load_round_result, write_round
from vla_train.pusht.episodes import make_env
from vla_train.pusht.expert import PushTExpert
from vla_train.pusht.labels import ExpertLabeler, label_state, observe
from vla_train.pusht.sim import snapshot

OBS_KEYS = ("observation.state", "observation.environment_state")


def _state_after(seed: int, steps: int):
    env = make_env()
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        env.step(rng.uniform(100, 400, 2).astype(np.float32))
    state = snapshot(env)
    env.close()
    return state


def test_expert_label_is_a_function_of_the_state() -> None:
    state = _state_after(7, 12)
    first = label_state(PushTExpert(), state, 15)
    # A fresh expert, and one that has planned elsewhere first: the same chunk, bit for bit.
    used = PushTExpert()
    label_state(used, _state_after(8, 5), 15)
    for other in (label_state(PushTExpert(), state, 15), label_state(used, state, 15)):
        np.testing.assert_array_equal(first.actions, other.actions)
        np.testing.assert_array_equal(first.keypoints, other.keypoints)
    assert first.actions.shape == (15, 2) and first.keypoints.shape == (15, 16)
    # The first observation is the state's own (what gym-pusht would report).
    env = make_env()
    obs, _ = env.reset(seed=3)
    agent, keypoints = observe(snapshot(env))
    env.close()
    np.testing.assert_allclose(agent, obs["agent_pos"], atol=1e-4)
    np.testing.assert_allclose(keypoints, obs["environment_state"], atol=1e-3)


def test_labels_in_worker_processes_equal_in_process_labels() -> None:
    states = [_state_after(s, 6) for s in (1, 2, 3)]
    with ExpertLabeler(workers=2) as pool:
        remote = pool(states, 8)
    local = ExpertLabeler(workers=1)(states, 8)
    for a, b in zip(remote, local, strict=True):
        np.testing.assert_array_equal(a.actions, b.actions)


def test_controller_labels_are_its_own_continuation() -> None:
    """`task.expert=controller` labels with the analytic controller: the chunk is its closed-loop
    continuation in the cloned simulator, every step a fresh decision."""
    states = [_state_after(s, 6) for s in (1, 2)]
    with ExpertLabeler(workers=2, expert="controller") as pool:
        remote = pool(states, 8)
    labels = ExpertLabeler(workers=1, expert="controller")(states, 8)
    for state, label, other in zip(states, labels, remote, strict=True):
        actions, _, _ = PushController().chunk_with_states(state, 8)
        np.testing.assert_array_equal(label.actions, actions)
        np.testing.assert_array_equal(other.actions, actions)
        assert label.replanned.all()
    with pytest.raises(ValueError, match=r"task\.expert"):
        ExpertLabeler(workers=1, expert="oracle")


@pytest.mark.parametrize(
    ("field", "value"),
    [("rounds", -1), ("beta", 1.5), ("beta", -0.1), ("episodes_per_round", 0), ("workers", 0)],
)
def test_bad_knobs_fail_at_construction_naming_the_key(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"task.dagger.{field}=")):
        DaggerConfig(**{field: value})


def test_rounds_may_not_use_the_test_seeds() -> None:
    with pytest.raises(ValueError, match="test seeds"):
        DaggerConfig(rounds=2, first_seed=99_990, episodes_per_round=20)


def test_default_config_composes_with_valid_dagger_knobs() -> None:
    pusht = load_config([]).pusht
    assert pusht is not None
    config = pusht.task.dagger
    assert config.rounds >= 1 and 0.0 <= config.beta <= 1.0
    with pytest.raises(ValueError, match=r"task\.dagger"):
        load_config(["+task.dagger.bogus=1"])
    from vla_train.distributed import DistInfo
    from vla_train.recipes.pusht_imf import PushTIMF

    image = load_config(["task=pusht_image", "task.dagger.rounds=2"])
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"task\.dagger\.rounds=2: .* low-dim"):
        PushTIMF(image, Path("unused"), info)


class _ConstantPolicy:
    """Always asks for the same 8 absolute targets: a stand-in learner."""

    def __call__(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = obs["observation.state"].shape[0]
        chunk = torch.linspace(150.0, 350.0, 8)[:, None].repeat(1, 2)
        return {"action": chunk.expand(batch, 8, 2).clone()}


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_round_adds_exactly_the_visited_states_with_expert_labels(
    beta: float, tmp_path: Path
) -> None:
    config = DaggerConfig(rounds=1, episodes_per_round=2, beta=beta, n_envs=2, max_steps=24)
    labeler = ExpertLabeler(workers=1)
    episodes, result = collect_round(
        _ConstantPolicy(),
        labeler,
        config,
        1,
        obs_keys=OBS_KEYS,
        n_obs_steps=2,
        horizon=16,
        device=torch.device("cpu"),
    )
    # 24 env steps in chunks of 8: three decision points per episode, none ends early.
    assert result.n_labels == len(episodes) == 6
    expert = PushTExpert()
    env = make_env(max_steps=24)
    for i, seed in enumerate(config.seeds_of_round(1)):
        obs, _ = env.reset(seed=seed)
        executed: list[np.ndarray] = []
        for decision in range(3):
            episode = episodes[2 * decision + i]  # lock-step: decision-major order
            state = snapshot(env)
            label = label_state(expert, state, 15)
            prefix = 0 if decision == 0 else 1
            assert len(episode["action"]) == prefix + 15
            # The visited observation, the learner's executed action before it, then the label.
            np.testing.assert_array_equal(
                episode["observation.state"][prefix], np.float32(obs["agent_pos"])
            )
            np.testing.assert_array_equal(
                episode["observation.environment_state"][prefix],
                np.float32(obs["environment_state"]),
            )
            if prefix:
                np.testing.assert_array_equal(episode["action"][0], executed[-1])
            np.testing.assert_array_equal(episode["action"][prefix:], label.actions)
            chunk = (
                label.actions[:8]
                if beta == 1.0
                else np.asarray(
                    _ConstantPolicy()({"observation.state": torch.zeros(1, 2, 2)})["action"][0]
                )
            )
            for action in chunk:
                executed.append(np.asarray(action, np.float32))
                obs, *_ = env.step(action)
    env.close()
    root = write_round(tmp_path / "run", episodes, result)
    frames = read_frames(root, keys=("action", *OBS_KEYS))
    assert len(frames.episodes) == 6 and result.n_frames == sum(len(e["action"]) for e in episodes)
    np.testing.assert_array_equal(
        frames.columns["action"], np.concatenate([e["action"] for e in episodes])
    )
    windows = LeRobotWindowDataset(root, n_obs_steps=2, horizon=16, keys=OBS_KEYS)
    assert len(windows) > 0
    assert load_round_result(tmp_path / "run", 1).n_labels == 6


def test_plan_once_label_follows_one_fresh_plan() -> None:
    state = _state_after(11, 10)
    expert = PushTExpert()
    once = label_state(expert, state, 15, plan_once=True)
    replanning = label_state(expert, state, 15)
    # The same fresh plan for the first `replan_every` steps; after that only the replanning
    # label plans again (the plan-once chunk is the first plan's continuation).
    np.testing.assert_array_equal(once.actions[:8], replanning.actions[:8])
    plan = np.asarray(expert.plan(state).targets, np.float32)
    n = min(len(plan), 15)
    assert n > 8 and replanning.replanned[8] and not once.replanned[1:n].any()
    np.testing.assert_array_equal(once.actions[:n], plan[:n])
    np.testing.assert_array_equal(once.actions, label_state(PushTExpert(), state, 15, True).actions)


def test_label_every_labels_the_visited_states_between_queries() -> None:
    config = DaggerConfig(
        rounds=1, episodes_per_round=1, beta=0.0, n_envs=1, max_steps=16, label_every=3,
        plan_once=True,
    )  # fmt: skip
    episodes, result = collect_round(
        _ConstantPolicy(),
        ExpertLabeler(workers=1, plan_once=True),
        config,
        1,
        obs_keys=OBS_KEYS,
        n_obs_steps=2,
        horizon=16,
        device=torch.device("cpu"),
    )
    # Two queries (steps 0, 8); between them steps 3 and 6 of each chunk (step 16 ends it).
    assert result.n_labels == len(episodes) == 2 + 2 + 2
    expert = PushTExpert()
    env = make_env(max_steps=16)
    obs, _ = env.reset(seed=config.seeds_of_round(1)[0])
    chunk = _ConstantPolicy()({"observation.state": torch.zeros(1, 2, 2)})["action"][0].numpy()
    visited = {}
    for step in range(16):
        visited[step] = (snapshot(env), np.float32(obs["agent_pos"]))
        obs, *_ = env.step(chunk[step % 8])
    # Order: each query, then the states labelled while executing its chunk.
    for episode, step in zip(episodes, (0, 3, 6, 8, 11, 14), strict=True):
        state, agent = visited[step]
        prefix = 0 if step == 0 else 1
        np.testing.assert_array_equal(episode["observation.state"][prefix], agent)
        label = label_state(expert, state, 15, plan_once=True)
        np.testing.assert_array_equal(episode["action"][prefix:], label.actions)
        assert episode["expert.replanned"][prefix]
    env.close()


def test_label_every_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match=re.escape("task.dagger.label_every=")):
        DaggerConfig(label_every=-1)


@pytest.fixture(scope="module")
def walk_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_walk_dataset(tmp_path_factory.mktemp("walk") / "pusht_walk", n_episodes=3)


def _train(root: Path, run_dir: Path, *overrides: str) -> dict:
    from vla_train.loop import train

    config = load_config(
        [
            "experiment=smoke",
            f"task.dataset.root={root}",
            "device=cpu",
            "task.dagger.rounds=2",
            "task.dagger.every_steps=10",
            "task.dagger.episodes_per_round=2",
            "task.dagger.n_envs=2",
            "task.dagger.max_steps=16",
            "task.dagger.workers=1",
            "train.keep_last_checkpoints=10",
            *overrides,
        ]
    )
    return train(config, run_dir)


def _curve(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_resume_after_a_round_reproduces_the_uninterrupted_run(
    walk_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    metrics = _train(walk_dataset, run)
    assert [r["round"] for r in metrics["dagger_rounds"]] == [1, 2]
    assert [r["step"] for r in metrics["dagger_rounds"]] == [10, 20]
    full_curve = _curve(run)
    ckpts = run / "checkpoints"
    final = load_file(ckpts / "step_0000030" / "ema.safetensors")
    round2 = read_frames(run / "dagger" / "round-002", keys=("action",)).columns["action"]
    # "Crash" after step 15, during round 2: its data and every later checkpoint are gone.
    for name in ("step_0000020", "step_0000030"):
        shutil.rmtree(ckpts / name)
    shutil.rmtree(run / "dagger" / "round-002")
    (ckpts / "latest").write_text("step_0000015")
    resumed = _train(walk_dataset, run, "resume=true")
    assert [r["round"] for r in resumed["dagger_rounds"]] == [1, 2]
    np.testing.assert_array_equal(
        read_frames(run / "dagger" / "round-002", keys=("action",)).columns["action"], round2
    )
    resumed_curve = [c for c in _curve(run)[len(full_curve) :] if "train/loss" in c]
    expected = [c for c in full_curve if "train/loss" in c and c["step"] > 15]
    assert resumed_curve == expected  # loss, lr, grad norm, epoch: bit-identical
    for key, value in final.items():
        assert torch.equal(value, load_file(ckpts / "step_0000030" / "ema.safetensors")[key]), key


def test_overlapped_rounds_resume_mid_round_reproduces_the_uninterrupted_run(
    walk_dataset: Path, tmp_path: Path
) -> None:
    """task.dagger.overlap: rounds run in a background process on a weight snapshot and join the
    data `every_steps` later; a crash while one is in flight (with or without its data written)
    resumes to bit-identical data, losses and weights."""
    overlap = ("task.dagger.overlap=true", "task.dagger.every_steps=8")
    run = tmp_path / "run"
    metrics = _train(walk_dataset, run, *overlap)
    rounds = metrics["dagger_rounds"]
    assert [(r["round"], r["step"]) for r in rounds] == [(1, 8), (2, 16)]
    assert all(r["extra"]["wait_s"] >= 0 for r in rounds)
    assert (run / "dagger" / "round-002.policy.safetensors").is_file()
    full_curve = _curve(run)
    ckpts = run / "checkpoints"
    final = load_file(ckpts / "step_0000030" / "ema.safetensors")
    round2 = read_frames(run / "dagger" / "round-002", keys=("action",)).columns["action"]
    for keep_round_data in (True, False):
        # "Crash" after step 16 (round 1 joined, round 2 started): later checkpoints are gone.
        for later in [p for p in ckpts.glob("step_*") if int(p.name[5:]) > 16]:
            shutil.rmtree(later)
        if not keep_round_data:
            shutil.rmtree(run / "dagger" / "round-002")
        (ckpts / "latest").write_text("step_0000016")
        (run / "train_log.jsonl").write_text(
            "".join(json.dumps(c) + "\n" for c in full_curve if c["step"] <= 16)
        )
        resumed = _train(walk_dataset, run, *overlap, "resume=true")
        assert [r["round"] for r in resumed["dagger_rounds"]] == [1, 2]
        np.testing.assert_array_equal(
            read_frames(run / "dagger" / "round-002", keys=("action",)).columns["action"], round2
        )
        after = [c for c in _curve(run) if "train/loss" in c and c["step"] > 16]
        assert after == [c for c in full_curve if "train/loss" in c and c["step"] > 16]
        resumed_final = load_file(ckpts / "step_0000030" / "ema.safetensors")
        for key, value in final.items():
            assert torch.equal(value, resumed_final[key]), key


def test_overlapped_rounds_must_join_before_the_last_step(
    walk_dataset: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        ValueError, match=r"task\.dagger\.overlap=true: round 2 .* train\.max_steps"
    ):
        _train(walk_dataset, tmp_path / "run", "task.dagger.overlap=true", "train.max_steps=20")
