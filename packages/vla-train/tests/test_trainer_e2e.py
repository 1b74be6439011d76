"""End to end on CPU: a 30-step train + 2-episode gym-pusht eval on a 3-episode expert dataset;
`resume=true` from a mid-run checkpoint replays the uninterrupted loss curve and weights
exactly; `torchrun --nproc_per_node=2` (gloo) through the real console entry point keeps both
replicas bit-identical and logs/checkpoints on rank 0 only."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vla_imf import IMFPolicyConfig
from vla_train._testing import load_config, write_random_walk_dataset


@pytest.fixture(scope="module")
def expert_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vla_train.pusht import generate_dataset

    out = tmp_path_factory.mktemp("expert") / "pusht3"
    return generate_dataset(out, 3, seed=0, image=False, workers=1, progress=False)


@pytest.fixture(scope="module")
def walk_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_walk_dataset(tmp_path_factory.mktemp("walk") / "pusht_walk", n_episodes=3)


def _train(root: Path, run_dir: Path, *overrides: str) -> dict:
    from vla_train.loop import train

    config = load_config(
        ["experiment=smoke", f"task.dataset.root={root}", "device=cpu", *overrides]
    )
    return train(config, run_dir)


def _curve(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_train_30_steps_then_evaluate_2_episodes(expert_dataset: Path, tmp_path: Path) -> None:
    metrics = _train(expert_dataset, tmp_path / "run")
    assert metrics["steps"] == 30 and metrics["world_size"] == 1
    ev = metrics["eval"]
    assert ev["n_episodes"] == 2 and ev["seeds"] == [100000, 100001]
    assert all(0.0 <= c <= 1.0 for c in ev["max_coverage"])
    assert ev["success_rate"] == sum(ev["success"]) / 2
    curve = _curve(tmp_path / "run")
    assert [c["step"] for c in curve] == list(range(1, 31))
    assert all(torch.isfinite(torch.tensor(c["train/loss"])) for c in curve)
    # Learning happened: the late losses sit below the first ones.
    first = sum(c["train/loss"] for c in curve[:5]) / 5
    last = sum(c["train/loss"] for c in curve[-5:]) / 5
    assert last < first
    ckpt = tmp_path / "run" / "checkpoints"
    assert (ckpt / "latest").read_text() == "step_0000030"
    final = ckpt / "step_0000030"
    assert {p.name for p in final.iterdir()} == {
        "model.safetensors",
        "ema.safetensors",
        "config.json",
        "train_state.pt",
    }
    config = json.loads((final / "config.json").read_text())
    assert (
        config["policy"]["backbone"]["n_emb"] == 32 and config["hydra"]["train"]["max_steps"] == 30
    )
    assert "gradient_checkpointing" not in config["policy"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the nested form needs no migration
        policy_config = IMFPolicyConfig.from_dict(config["policy"])
    assert type(policy_config.backbone).__name__ == "AttnResBackboneConfig"
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["eval"]["max_coverage"] == ev["max_coverage"]


def test_final_weights_also_evaluated_with_other_sampler_steps(
    walk_dataset: Path, tmp_path: Path
) -> None:
    metrics = _train(
        walk_dataset,
        tmp_path / "run",
        "train.max_steps=3",
        "eval.n_test=1",
        "eval.max_steps=16",
        "eval.also_inference_steps=[1,2]",
    )
    extra = metrics["eval_by_inference_steps"]
    assert set(extra) == {"1", "2"}
    # 1 step is the policy's own sampler: the same episodes give the same numbers.
    assert extra["1"]["eval/mean_max_coverage"] == metrics["eval"]["mean_max_coverage"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["eval_by_inference_steps"]["2"] == extra["2"]


def test_resume_reproduces_the_uninterrupted_run(walk_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(walk_dataset, run)
    full_curve = _curve(run)
    ckpts = run / "checkpoints"
    uninterrupted = load_file(ckpts / "step_0000030" / "model.safetensors")
    uninterrupted_ema = load_file(ckpts / "step_0000030" / "ema.safetensors")
    # "Crash" after step 15: drop the later checkpoint and resume from the mid-run one.
    shutil.rmtree(ckpts / "step_0000030")
    (ckpts / "latest").write_text("step_0000015")
    first_segment_s = json.loads((run / "metrics.json").read_text())["train_wall_s"]
    metrics = _train(walk_dataset, run, "resume=true")
    assert metrics["steps"] == 30 and metrics["start_step"] == 15
    # The summary counts the training time of both segments (it used to say `train 0 s`).
    assert metrics["train_wall_s"] > metrics["segment_train_wall_s"] > 0
    assert metrics["train_wall_s"] < first_segment_s + metrics["segment_train_wall_s"]
    from vla_train.recipes import format_summary

    assert "resumed at step 15" in format_summary("pusht_imf", metrics, run)
    resumed_curve = _curve(run)[30:]
    assert [c["step"] for c in resumed_curve] == list(range(16, 31))
    for a, b in zip(full_curve[15:], resumed_curve):
        assert a == b  # loss, lr, grad norm, epoch: bit-identical
    resumed = load_file(ckpts / "step_0000030" / "model.safetensors")
    resumed_ema = load_file(ckpts / "step_0000030" / "ema.safetensors")
    for key, value in uninterrupted.items():
        assert torch.equal(value, resumed[key]), key
    for key, value in uninterrupted_ema.items():
        assert torch.equal(value, resumed_ema[key]), key


def test_resume_of_a_finished_run_reports_the_time_it_trained(
    walk_dataset: Path, tmp_path: Path
) -> None:
    """Killed after the last checkpoint (e.g. during the final evaluation) and resumed: no step is
    left to train, and the summary still reports the seconds the run trained."""
    run = tmp_path / "run"
    first = _train(walk_dataset, run, "train.max_steps=4")
    again = _train(walk_dataset, run, "train.max_steps=4", "resume=true")
    assert again["steps"] == 4 and again["start_step"] == 4
    assert again["segment_train_wall_s"] < again["train_wall_s"] <= first["train_wall_s"]
    assert again["train_wall_s"] > 0
    assert again["eval"]["max_coverage"] == first["eval"]["max_coverage"]


def test_resume_without_checkpoint_starts_fresh(walk_dataset: Path, tmp_path: Path) -> None:
    metrics = _train(walk_dataset, tmp_path / "run", "resume=true", "train.max_steps=3")
    assert metrics["steps"] == 3


def test_periodic_evaluation_every_k_epochs(walk_dataset: Path, tmp_path: Path) -> None:
    # 99 windows / batch 16 -> 6 batches per epoch: epochs end at steps 6, 12, 18.
    _train(walk_dataset, tmp_path / "run", "eval.every_epochs=2", "train.max_steps=14")
    evals = [c for c in _curve(tmp_path / "run") if "eval/success_rate" in c]
    assert [c["step"] for c in evals] == [12]
    assert 0.0 <= evals[0]["eval/mean_max_coverage"] <= 1.0
    steps = [c["step"] for c in _curve(tmp_path / "run") if "train/loss" in c]
    assert steps == list(range(1, 15))  # the loader restarts cleanly after the eval


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_ddp_two_gloo_processes(walk_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "vla_train.cli",
        "experiment=smoke",
        f"task.dataset.root={walk_dataset}",
        "device=cpu",
        "train.max_steps=8",
        "train.checkpoint_every_steps=4",
        f"hydra.run.dir={run}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # Each rank drew different windows and noise; identical weights prove the gradient all-reduce.
    assert metrics["ddp_max_param_divergence"] == 0.0
    assert [c["step"] for c in _curve(run)] == list(range(1, 9))  # rank 0 logs once per step
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest",
        "step_0000004",
        "step_0000008",
    ]
    state = torch.load(run / "checkpoints" / "step_0000008" / "train_state.pt", weights_only=True)
    assert len(state["rng"]) == 2  # one RNG state per rank, for an exact DDP resume
    assert "success rate" in proc.stdout
