"""Recipe `vla_finetune`: pi0 / pi0.5 (vla-core) fine-tuned on a LeRobot v3 dataset, optionally
with LoRA and LightVLA token pruning (vla-prune); 1 process, DDP or FSDP2 (`parallel.strategy`).

Determinism is by construction, so that resume and N-process runs reproduce a 1-process run
(openpi `scripts/train.py` / lerobot `scripts/lerobot_train.py` semantics):
- the global batch of step k is a fixed slice of a permutation seeded by (seed, epoch), dealt
  round-robin to the ranks by the loop's one sampler (`ShardedEpochSampler`, shared with
  `pusht_imf`): rank r holds global rows r, r + W, r + 2W, …;
- flow-matching noise and time for the *global* batch come from a generator seeded by
  (seed, step) and each rank takes the same rows;
- the loss is `Σ mask·(v − u)² / (b · H · action_dim)` (a fixed denominator, lerobot's masked
  mean), so the mean of the rank losses equals the 1-process loss and DDP / FSDP2 gradient
  averaging gives the 1-process gradient.
The export gathers a full state dict, folds LoRA into the base weights and writes vla-core's
safetensors + config.json, which `vla_core.load_pretrained` reads for `sample_actions`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from vla_core import JointDecoderLayer, PI0Model, save_pretrained
from vla_prune import ImageTokenPruner
from vla_train.config import TrainConfig
from vla_train.distributed import DistInfo, ShardedEpochSampler
from vla_train.parallel import resolve_strategy
from vla_train.recipes.base import RunSummary, StepEvent
from vla_train.vla.data import VLADataset, collate
from vla_train.vla.lora import LoRALinear, merge_lora
from vla_train.vla.policy import build_policy, optimizer_param_groups, trainable_parameter_count
from vla_train.vla.synthetic import write_synthetic_dataset
from vla_train.vla.tokenizer import load_tokenizer

__all__ = ["FlowLoss", "VLAFinetune", "export_policy"]

log = logging.getLogger(__name__)


class FlowLoss(nn.Module):
    """forward(batch) -> the masked flow-matching loss with a fixed denominator."""

    def __init__(self, model: nn.Module, denominator: int) -> None:
        super().__init__()
        self.model = model
        self.denominator = denominator

    def forward(self, batch: dict[str, Any]) -> Tensor:
        b = batch["batch"]
        per_element = self.model(b.observation, b.actions, batch["noise"], batch["time"])
        return (per_element * b.action_mask).sum() / self.denominator


def export_policy(model: nn.Module, directory: Path) -> Path | None:
    """Gather the full state dict (all ranks must call), then on rank 0 rebuild an unsharded copy,
    merge LoRA, drop the pruner (a parameter-free training-time choice, re-attached at load) and
    write `model.safetensors` + `config.json`. Returns the directory on rank 0, else None."""
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
        return None
    assert isinstance(model, PI0Model)
    plain = _plain_copy(model)
    plain.load_state_dict(full, strict=True)
    merge_lora(plain)
    plain.set_image_token_filter(None)
    out = save_pretrained(plain, directory)
    if dist.is_initialized():
        dist.barrier()
    return Path(out)


def _plain_copy(model: PI0Model) -> PI0Model:
    """A CPU PI0Model with the same module tree (LoRA adapters and filter included) as `model`
    but ordinary (non-FSDP) classes; weights uninitialised (the strict load overwrites them)."""
    from transformers.initialization import no_init_weights

    with torch.device("cpu"), no_init_weights():
        skeleton = PI0Model(model.config)
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = skeleton.get_submodule(parent_name) if parent_name else skeleton
            base = getattr(parent, child)
            setattr(parent, child, LoRALinear(base, module.lora_a.shape[0], module.scaling))
    if model.image_token_filter is not None:
        skeleton.set_image_token_filter(copy.deepcopy(model.image_token_filter))
    return skeleton


class VLAFinetune:
    """The `vla_finetune` recipe (see the module docstring)."""

    blocks: tuple[type[nn.Module], ...] = (JointDecoderLayer,)

    def __init__(self, config: TrainConfig, run_dir: Path, info: DistInfo) -> None:
        assert config.vla is not None
        self.config, self.vla, self.run_dir, self.info = config, config.vla, run_dir, info
        batch = config.train.batch_size
        if batch % info.world_size:
            raise ValueError(
                f"train.batch_size={batch} (global) is not divisible by {info.world_size} processes"
            )
        self.local_batch = batch // info.world_size
        self.rows = slice(info.rank, None, info.world_size)  # the sampler's round-robin deal
        self.noise_scales: list[float | None] = []

    def _data_root(self) -> str:
        if self.vla.data.root:
            return self.vla.data.root
        # Each rank writes its own identical copy, so torchrun ranks never race on one folder.
        folder = self.run_dir / f"synthetic_data_rank{self.info.rank}"
        return str(write_synthetic_dataset(folder, **dict(self.vla.synthetic or {})))

    def build_model(self) -> nn.Module:
        vla = self.vla
        model = build_policy(vla.policy, device=self.info.device, seed=self.config.seed)
        mc = model.config
        tokenizer = load_tokenizer(vla.tokenizer)
        if tokenizer.vocab_size > mc.backbone.vocab_size:
            raise ValueError(
                f"tokenizer vocab {tokenizer.vocab_size} exceeds the backbone's "
                f"{mc.backbone.vocab_size}"
            )
        self.dataset = VLADataset(
            dataclasses.replace(vla.data, root=self._data_root()),
            tokenizer=tokenizer,
            image_size=mc.vision.image_size,
            action_horizon=mc.action_horizon,
            pad_dim=mc.action_dim,
            max_token_len=mc.max_token_len or 48,
            variant=mc.variant,
        )
        if len(self.dataset.camera_keys) != mc.num_cameras:
            raise ValueError(
                f"dataset has cameras {self.dataset.camera_keys}, the model expects "
                f"{mc.num_cameras}"
            )
        self.sampler = ShardedEpochSampler(
            len(self.dataset),
            self.local_batch,
            rank=self.info.rank,
            world_size=self.info.world_size,
            seed=self.config.seed,
        )
        if len(self.sampler) == 0 or self.sampler.batch_size != self.local_batch:
            raise ValueError(
                f"dataset has {len(self.dataset)} samples, fewer than train.batch_size="
                f"{self.config.train.batch_size}"
            )
        token_filter = model.image_token_filter
        self.pruner = token_filter if isinstance(token_filter, ImageTokenPruner) else None
        self.noise_schedule = vla.policy.pruning.schedule_for(self.config.train.max_steps)
        self.model = model
        return model

    def loss_module(self, model: nn.Module) -> nn.Module:
        horizon = self.model.config.action_horizon
        return FlowLoss(model, self.local_batch * horizon * self.dataset.action_dim)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        tc = self.config.train
        assert isinstance(model, PI0Model)
        return torch.optim.AdamW(
            optimizer_param_groups(model),
            lr=tc.learning_rate,
            betas=tc.betas,
            weight_decay=tc.weight_decay,
        )

    def checkpoint_config(self) -> dict[str, Any]:
        return {"policy": asdict(self.vla.policy), "hydra": dict(self.config.composed)}

    def start(self, state: Mapping[str, Any] | None) -> None:
        del state  # the data position is a pure function of the step

    def next_batch(self, step: int) -> tuple[Any, dict[str, float]]:
        if self.pruner is not None:
            scale = self.noise_schedule(step)
            self.pruner.set_noise_scale(scale)
            self.noise_scales.append(scale)
        seed, device = self.config.seed, self.info.device
        epoch, slot = divmod(step, len(self.sampler))  # the data position is a function of the step
        indices = next(self.sampler.batches(epoch, slot))
        batch = collate([self.dataset[i] for i in indices]).to(device)
        # Noise [B, H, P] and time [B] of the global batch, identical on every rank: the model's
        # own samplers under a CPU RNG forked and seeded by (seed, step).
        mc, size = self.model.config, self.config.train.batch_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + step + 1)
            noise = torch.randn(size, mc.action_horizon, mc.action_dim)
            flow_time = self.model.sample_time(size)
        torch.manual_seed(seed * 7_919 + step)  # the pruner's training noise
        return {
            "batch": batch,
            "noise": noise[self.rows].to(device),
            "time": flow_time[self.rows].to(device),
        }, {"train/epoch": float(epoch)}

    def between_steps(self, step: int, eval_model: nn.Module) -> StepEvent | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def finish(self, model: nn.Module, run: RunSummary) -> dict[str, Any]:
        export_dir = export_policy(model, self.run_dir / "export") if self.vla.export else None
        if not self.info.is_main:
            return {}
        trainable, total = trainable_parameter_count(model)
        return {
            "run_name": self.config.run_name,
            "start_step": run.start_step,
            "steps": run.step,
            "losses": run.losses,
            "noise_scales": self.noise_scales,
            "train_wall_s": run.train_wall_s,
            "segment_train_wall_s": run.segment_train_wall_s,
            "data_wall_s": run.data_wall_s,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "world_size": self.info.world_size,
            "strategy": resolve_strategy(self.config.parallel.strategy, self.info.world_size),
            "export_dir": None if export_dir is None else str(export_dir),
        }

    def close(self) -> None:
        pass


def format_summary(metrics: Mapping[str, Any], run_dir: Path) -> str:
    """The line `vla-train` prints after a fine-tuning run."""
    losses = metrics["losses"]
    last = f"{losses[-1]:.5f}" if losses else "n/a"
    resumed = f" (resumed at step {metrics['start_step']})" if metrics["start_step"] else ""
    return (
        f"\n{metrics['run_name']}: {metrics['steps']} steps{resumed}, last loss {last}, train "
        f"{metrics['train_wall_s']:.0f} s, {metrics['trainable_parameters']:,} trainable of "
        f"{metrics['total_parameters']:,} parameters, export {metrics['export_dir']} | {run_dir}"
    )
