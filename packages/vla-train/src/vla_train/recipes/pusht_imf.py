"""Recipe `pusht_imf`: an iMF / flow-matching IMFPolicy (vla-imf) on PushT demonstrations, with
optional expert-in-the-loop (DAgger) rounds that grow the training set mid-run, evaluated in
gym-pusht (diffusion_policy's protocol).

Determinism (what `resume=true` and the default's numbers rely on): the policy is initialised from
`seed` on every rank; the loop then seeds `seed + rank` for the per-step noise, which the policy
draws from the global torch RNG; the data order comes from `ShardedEpochSampler(seed, epoch)`;
rollouts run under a forked RNG. `state_dict()` is the (epoch, batch, DAgger round) position.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from vla_imf import CHECKPOINT_LAYER_TYPES, IMFPolicy
from vla_train.checkpoint import seed_everything
from vla_train.config import PushTConfig, TrainConfig
from vla_train.data import LeRobotWindowDataset
from vla_train.data.tensor_windows import TensorWindows
from vla_train.distributed import DistInfo, ShardedEpochSampler, barrier, replica_divergence
from vla_train.eval import action_latency_ms, first_observation
from vla_train.pusht import ensure_default_dataset
from vla_train.pusht.background import BackgroundRounds
from vla_train.pusht.dagger import RoundResult, load_round_result, round_dir
from vla_train.pusht.labels import ExpertLabeler
from vla_train.pusht.rollouts import (
    in_policy_frame,
    obs_keys,
    run_dagger_round,
    run_evaluation,
    world_policy,
)
from vla_train.recipes.base import RunSummary, StepEvent

__all__ = ["LossModule", "PushTIMF", "dataset_root", "format_summary", "with_dagger_rounds"]

log = logging.getLogger(__name__)


class LossModule(nn.Module):
    """Makes `compute_loss` the module's forward, so DDP's gradient hooks see the real step."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.policy.compute_loss(batch)  # type: ignore[operator]


def dataset_root(cfg: PushTConfig) -> Path:
    """The dataset folder: `task.dataset.root`, or the embedded default (generated once, cached)."""
    ds = cfg.task.dataset
    if ds.root is not None:
        root = Path(ds.root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"task.dataset.root={root} does not exist")
        return root
    args = (ds.num_episodes, ds.seed, ds.image)
    return ensure_default_dataset(*args, action_noise=ds.action_noise, expert=cfg.task.expert)


def build_dataset(cfg: PushTConfig, root: Path) -> LeRobotWindowDataset:
    """Training windows; `task.dataset.decision_windows` keeps only windows whose current frame is
    an expert decision point (the column `expert.replanned`), the way the policy is queried."""
    task = cfg.task
    max_eps = task.dataset.max_train_episodes
    return LeRobotWindowDataset(
        root,
        n_obs_steps=task.n_obs_steps,
        horizon=task.horizon,
        n_action_steps=task.n_action_steps,
        keys=(*task.lowdim_keys, *task.image_keys),
        episodes=list(range(max_eps)) if max_eps is not None else None,
        current_frame_mask="expert.replanned" if task.dataset.decision_windows else None,
    )


def round_windows(demos: LeRobotWindowDataset, run_dir: Path, round_index: int) -> Any:
    """DAgger round `round_index`'s dataset, its windows cut the same way as the demos'."""
    return LeRobotWindowDataset(
        round_dir(run_dir, round_index),
        n_obs_steps=demos.n_obs_steps,
        horizon=demos.horizon,
        keys=demos.keys,
        pad_before=demos.pad_before,
        pad_after=demos.pad_after,
        current_frame_mask=demos.current_frame_mask,
    )


def with_dagger_rounds(demos: Any, run_dir: Path, rounds: int) -> Any:
    """The training set after `rounds` DAgger rounds: the demos plus every round's dataset."""
    if rounds == 0:
        return demos
    return ConcatDataset([demos, *(round_windows(demos, run_dir, r) for r in range(1, rounds + 1))])


class PushTIMF:
    """The `pusht_imf` recipe (see the module docstring). `blocks` (the units of
    `parallel.activation_checkpointing` and FSDP2 sharding) are the backbone kind's
    `vla_imf.CHECKPOINT_LAYER_TYPES`."""

    blocks: tuple[type[nn.Module], ...]

    def __init__(self, config: TrainConfig, run_dir: Path, info: DistInfo) -> None:
        assert config.pusht is not None
        self.config, self.cfg, self.run_dir, self.info = config, config.pusht, run_dir, info
        if config.train.batch_size % info.world_size:
            raise ValueError(
                f"train.batch_size={config.train.batch_size} (global) is not divisible by "
                f"{info.world_size} processes"
            )
        self.blocks = CHECKPOINT_LAYER_TYPES[self.cfg.policy.backbone.kind]
        self.dagger = self.cfg.task.dagger
        task = self.cfg.task
        lowdim = not task.image_keys and task.env_obs_type == "environment_state_agent_pos"
        if self.dagger.rounds and not lowdim:
            raise ValueError(
                f"task.dagger.rounds={self.dagger.rounds}: expert-in-the-loop rounds need the "
                "low-dim PushT task (no image_keys, env_obs_type environment_state_agent_pos)"
            )
        if self.dagger.rounds and self.dagger.overlap:
            joins = self.dagger.step_of_round(self.dagger.rounds) + self.dagger.every_steps
            if joins >= config.train.max_steps:
                raise ValueError(
                    f"task.dagger.overlap=true: round {self.dagger.rounds} would start at step "
                    f"{joins - self.dagger.every_steps} and join the data at step {joins}, not before "
                    f"train.max_steps={config.train.max_steps}; lower task.dagger.rounds or "
                    "task.dagger.every_steps"
                )
        self.t_start = time.perf_counter()
        # rounds: merged into the training set; launched: started (overlap: one may be running)
        self.epoch = self.batch = self.rounds = self.launched = 0
        self.results: list[RoundResult | None] = []
        self.labeler: ExpertLabeler | None = None
        self.background: BackgroundRounds | None = None
        self._stacked: list[TensorWindows] = []  # low-dim: the demos', then each round's windows
        self._iter: Iterator[dict[str, torch.Tensor]] | None = None

    def build_model(self) -> nn.Module:
        # Rank 0 generates/caches the default dataset first; the others then read the cache.
        root = dataset_root(self.cfg) if self.info.is_main else None
        barrier(self.info)
        self.demos = build_dataset(self.cfg, root or dataset_root(self.cfg))
        seed_everything(self.config.seed)  # identical initial weights on every rank
        policy = IMFPolicy(self.cfg.policy)
        # Fixed from the demos (in the policy's frame): DAgger rounds don't move the normalizer.
        policy.fit_normalizer(in_policy_frame(self.demos, self.cfg).stats())
        return policy.to(self.info.device)

    def loss_module(self, model: nn.Module) -> nn.Module:
        return LossModule(model)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        tc = self.config.train
        assert isinstance(model, IMFPolicy)
        return model.configure_optimizers(
            weight_decay=tc.weight_decay, learning_rate=tc.learning_rate, betas=tc.betas
        )

    def checkpoint_config(self) -> dict[str, Any]:
        return {"policy": asdict(self.cfg.policy), "hydra": dict(self.config.composed)}

    def start(self, state: Mapping[str, Any] | None) -> None:
        if state is not None:
            self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
            self.rounds = int(state.get("dagger_round", 0))
            self.launched = int(state.get("dagger_launched", self.rounds))
        self.results = [load_round_result(self.run_dir, r) for r in range(1, self.rounds + 1)]
        self._make_data()
        if self.dagger.rounds and self.info.is_main:
            if self.dagger.overlap:
                self.background = BackgroundRounds(self.cfg, self.run_dir)
                if self.launched > self.rounds:  # in flight when the checkpoint was written
                    self.background.launch(None, self.launched)
            else:
                self.labeler = ExpertLabeler(
                    self.dagger.workers,
                    plan_once=self.dagger.plan_once,
                    expert=self.cfg.task.expert,
                )
        if self.info.is_main:
            log.info(
                "%d windows, %d batches/epoch/rank",
                len(self.dataset),
                len(self.sampler),
            )

    def _make_data(self) -> None:
        """Demos + every DAgger round so far, in the policy's frame, sharded per rank. Low-dim
        windows are stacked into tensors once per part (`TensorWindows`): same values, without
        the per-sample reads and collation in every step."""
        if self.cfg.task.image_keys:
            windows = with_dagger_rounds(self.demos, self.run_dir, self.rounds)
            self.dataset = in_policy_frame(windows, self.cfg)
        else:
            for r in range(len(self._stacked), self.rounds + 1):
                part = self.demos if r == 0 else round_windows(self.demos, self.run_dir, r)
                self._stacked.append(TensorWindows.from_dataset(in_policy_frame(part, self.cfg)))
            self.dataset = TensorWindows.concat(self._stacked[: self.rounds + 1])
        self.sampler = ShardedEpochSampler(
            len(self.dataset),
            self.config.train.batch_size // self.info.world_size,
            rank=self.info.rank,
            world_size=self.info.world_size,
            seed=self.config.seed,
        )
        if len(self.sampler) == 0:
            raise ValueError(
                f"no batch fits: {len(self.dataset)} windows, batch_size="
                f"{self.config.train.batch_size}"
            )
        self._iter = None

    def next_batch(self, step: int) -> tuple[Any, dict[str, float]]:
        if self._iter is None and isinstance(self.dataset, TensorWindows):
            stacked, batches = self.dataset, self.sampler.batches(self.epoch, self.batch)
            self._iter = (stacked.batch(indices) for indices in batches)
        if self._iter is None:
            loader = DataLoader(
                self.dataset,
                batch_sampler=list(self.sampler.batches(self.epoch, self.batch)),
                num_workers=self.config.train.num_workers,
                pin_memory=self.info.device.type == "cuda",
                # Own generator: a loader must not draw from the global RNG (that would shift a
                # resumed run's noise stream), and worker seeds stay reproducible.
                generator=torch.Generator().manual_seed(self.config.seed * 7919 + self.epoch),
            )
            self._iter = iter(loader)
        batch = next(self._iter)
        extras = {"train/epoch": float(self.epoch)}
        self.batch += 1
        if self.batch >= len(self.sampler):
            self.epoch, self.batch, self._iter = self.epoch + 1, 0, None
        device = self.info.device
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}, extras

    def between_steps(self, step: int, eval_model: nn.Module) -> StepEvent | None:
        if self.dagger.overlap:
            event = self._overlapped_rounds(step, eval_model)
            if event is not None:
                return event
        elif self.rounds < self.dagger.rounds and step == self.dagger.step_of_round(
            self.rounds + 1
        ):
            return self._dagger_round(eval_model)
        every = self.cfg.eval.every_epochs
        if self.batch == 0 and every > 0 and self.epoch % every == 0:
            metrics: dict[str, float] = {}
            if self.info.is_main:
                res = run_evaluation(eval_model, self.cfg, self.info.device, None)
                metrics = res.summary()
                log.info(
                    "epoch %d step %d: success %.3f coverage %.3f",
                    self.epoch,
                    step,
                    res.success_rate,
                    res.mean_max_coverage,
                )
            barrier(self.info)
            self._iter = None  # restart the epoch's loader at (epoch, 0)
            return StepEvent(metrics)
        return None

    def _dagger_round(self, model: nn.Module) -> StepEvent:
        self.rounds += 1
        metrics: dict[str, float] = {}
        if self.info.is_main:
            assert self.labeler is not None
            result = run_dagger_round(
                model, self.cfg, self.dagger, self.rounds, self.labeler, self.run_dir
            )
            result.elapsed_s = time.perf_counter() - self.t_start
            self.results.append(result)
            metrics = result.summary()
            self._report(result, "training paused")
        barrier(self.info)
        self._make_data()  # demos + every round so far; a fresh loader over the grown dataset
        self.epoch, self.batch = self.epoch + 1, 0
        return StepEvent(metrics, checkpoint=True)

    def _overlapped_rounds(self, step: int, model: nn.Module) -> StepEvent | None:
        """`task.dagger.overlap`: merge the round in flight once `every_steps` have passed since
        it started, then start the next one on the current weights. Both checkpoint, so a
        resumed run knows what was in flight."""
        d, metrics = self.dagger, {}
        started = d.step_of_round(self.launched)
        merge = self.launched > self.rounds and step == started + d.every_steps
        launch = self.launched < d.rounds and step == d.step_of_round(self.launched + 1)
        if merge:
            self.rounds += 1
            if self.info.is_main:
                assert self.background is not None
                result = self.background.wait(self.rounds)
                result.elapsed_s = time.perf_counter() - self.t_start
                self.results.append(result)
                metrics = {**result.summary(), "dagger/wait_s": result.extra["wait_s"]}
                waited = result.extra["wait_s"]
                self._report(result, f"joined at step {step}, training waited {waited:.0f} s")
            barrier(self.info)
            self._make_data()
            self.epoch, self.batch = self.epoch + 1, 0
        if launch:
            self.launched += 1
            if self.info.is_main:
                assert self.background is not None
                self.background.launch(model, self.launched)
        return StepEvent(metrics, checkpoint=True) if merge or launch else None

    def _report(self, result: RoundResult, when: str) -> None:
        tqdm.write(
            f"DAgger round {result.round}/{self.dagger.rounds} (beta {result.beta:.2f}): "
            f"success {result.success_rate:.2f}, coverage {result.mean_max_coverage:.3f} on "
            f"{len(result.seeds)} fresh seeds; +{result.n_labels} labelled states "
            f"({result.rollout_s:.0f} s rollout, {result.label_s:.0f} s labels; {when})"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "dagger_round": self.rounds,
            "dagger_launched": max(self.launched, self.rounds),
        }

    def finish(self, model: nn.Module, run: RunSummary) -> dict[str, Any]:
        divergence = replica_divergence(model, self.info)
        if not self.info.is_main:
            return {}
        cfg, ev, device = self.cfg, self.cfg.eval, self.info.device
        eval_model: Any = run.ema_model if (run.ema_model is not None and ev.use_ema) else model
        video_dir = self.run_dir / "videos" if ev.n_videos > 0 else None
        res = run_evaluation(eval_model, cfg, device, video_dir)
        run.log(res.summary())
        # The same final weights sampled on other grids (e.g. iMF 2-NFE), same episodes.
        by_steps = {
            n: run_evaluation(eval_model, cfg, device, None, num_inference_steps=n)
            for n in ev.also_inference_steps
        }
        for n, extra in by_steps.items():
            run.log({f"{k}@{n}steps": v for k, v in extra.summary().items()})
        obs = first_observation(
            cfg.task.env_obs_type, obs_keys(cfg), cfg.task.n_obs_steps, ev.start_seed, device
        )
        eval_model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            latency = action_latency_ms(world_policy(eval_model, cfg), obs)
        p = cfg.policy
        recent = run.losses[-50:]
        return {
            "run_name": self.config.run_name,
            "task": cfg.task.name,
            "policy": {
                "tag": cfg.policy_tag,
                "backbone": p.backbone.kind,
                "objective": p.objective,
                "n_emb": p.backbone.n_emb,
                "n_layer": p.backbone.n_layer,
                "n_head": p.backbone.n_head,
                "num_inference_steps": p.num_inference_steps,
                "num_parameters": sum(q.numel() for q in model.parameters()),
            },
            "seed": self.config.seed,
            "steps": run.step,
            "batch_size": self.config.train.batch_size,
            "world_size": self.info.world_size,
            "ddp_max_param_divergence": divergence,
            "device": str(device),
            "final_loss": float(np.mean(recent)) if recent else None,
            "data_wall_s": run.data_wall_s,
            "train_wall_s": run.train_wall_s,
            "start_step": run.start_step,
            "segment_train_wall_s": run.segment_train_wall_s,
            "eval_wall_s": res.wall_s,
            "action_latency_ms_batch1": latency,
            "eval": res.to_dict(),
            # diffusion_policy's 50 standard seeds are the first 50 of a longer evaluation.
            "eval_standard": res.first(min(ev.standard_episodes, res.n_episodes)),
            "dagger_rounds": [
                {
                    k: v
                    for k, v in r.to_dict().items()
                    if k not in ("seeds", "success", "max_coverage")
                }
                for r in self.results
                if r is not None
            ],
            "eval_by_inference_steps": {
                str(n): {**extra.summary(), "ms_per_policy_call": extra.ms_per_policy_call}
                for n, extra in by_steps.items()
            },
        }

    def close(self) -> None:
        if self.labeler is not None:
            self.labeler.close()
        if self.background is not None:
            self.background.close()


def format_summary(metrics: Mapping[str, Any], run_dir: Path) -> str:
    """The lines `vla-train` prints after a PushT run."""
    ev, std = metrics["eval"], metrics["eval_standard"]
    lo, hi = ev["success_ci95"]
    lines = [
        f"\n{metrics['run_name']} on {metrics['task']}: success rate {std['success_rate']:.3f} "
        f"({round(std['success_rate'] * std['n_episodes'])}/{std['n_episodes']}), mean "
        f"max-coverage {std['mean_max_coverage']:.3f} on seeds {std['seeds'][0]}..{std['seeds'][1]}"
    ]
    if ev["n_episodes"] > std["n_episodes"]:
        lines.append(
            f"  all {ev['n_episodes']} seeds {ev['seeds'][0]}..{ev['seeds'][-1]}: success rate "
            f"{ev['success_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}), mean max-coverage "
            f"{ev['mean_max_coverage']:.3f}, score {ev['mean_score']:.3f}"
        )
    resumed = ""
    if metrics.get("start_step"):
        resumed = (
            f" (resumed at step {metrics['start_step']}: this process trained "
            f"{metrics['segment_train_wall_s']:.0f} s)"
        )
    lines.append(
        f"  {metrics['steps']} steps, data {metrics['data_wall_s']:.0f} s, train "
        f"{metrics['train_wall_s']:.0f} s{resumed}, eval {metrics['eval_wall_s']:.0f} s, action "
        f"latency {metrics['action_latency_ms_batch1']:.2f} ms | {run_dir}"
    )
    for n, extra in metrics.get("eval_by_inference_steps", {}).items():
        lines.append(
            f"  same weights, {n} sampling steps: success rate {extra['eval/success_rate']:.3f}, "
            f"mean max-coverage {extra['eval/mean_max_coverage']:.3f}, score "
            f"{extra['eval/mean_score']:.3f}"
        )
    return "\n".join(lines)
