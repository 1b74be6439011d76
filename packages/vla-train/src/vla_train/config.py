"""The one boundary between Hydra and the trainer: `from_dict` turns the composed config (a plain,
resolved dict; `cli.load_config` makes it from Hydra) into a frozen `TrainConfig`. Nothing past
this module sees a DictConfig or imports omegaconf.

Unknown keys raise with their dotted name; keys that were renamed (issue #19) raise naming the new
key (`RENAMED`), so an old override never silently does nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vla_imf import IMFPolicyConfig
from vla_train.pusht.controller import EXPERTS
from vla_train.pusht.dagger import DaggerConfig
from vla_train.vla.data import VLADataConfig
from vla_train.vla.lora import LoRAConfig
from vla_train.vla.policy import PolicyConfig, PruningConfig

__all__ = [
    "APP_KEYS",
    "RECIPES",
    "RENAMED",
    "STRATEGIES",
    "EMAConfig",
    "EvalConfig",
    "LoggerConfig",
    "ParallelConfig",
    "PushTConfig",
    "PushTDatasetConfig",
    "TaskConfig",
    "TrainConfig",
    "TrainSection",
    "VLAConfig",
    "check_overrides",
    "from_dict",
    "imf_policy_config",
]

RECIPES = ("pusht_imf", "vla_finetune")
STRATEGIES = ("auto", "none", "ddp", "fsdp2")
CHECKPOINT_FORMATS = ("auto", "safetensors", "dcp")

#: Old key -> new key (vla-train 0.x -> issue #19). Reading an old key raises naming the new one.
RENAMED = {
    "mode=vla_finetune": "recipe=vla_finetune",
    "vla.optim.max_steps": "train.max_steps",
    "vla.optim.batch_size": "train.batch_size",
    "vla.optim.learning_rate": "train.learning_rate",
    "vla.optim.warmup_steps": "train.warmup_steps",
    "vla.optim.min_lr_ratio": "train.min_lr_ratio",
    "vla.optim.weight_decay": "train.weight_decay",
    "vla.optim.betas": "train.betas",
    "vla.optim.grad_clip_norm": "train.grad_clip_norm",
    "vla.strategy": "parallel.strategy",
    "vla.fsdp_mixed_bf16": "parallel.mixed_bf16",
    "vla.checkpoint_every": "train.checkpoint_every_steps",
    "vla.log_every": "train.log_every_steps",
    "vla.policy.gradient_checkpointing": "parallel.activation_checkpointing",
    "policy.gradient_checkpointing": "parallel.activation_checkpointing",
    "policy.extra.gradient_checkpointing": "parallel.activation_checkpointing",
}


@dataclass(frozen=True)
class EMAConfig:
    enabled: bool = True
    power: float = 0.75
    max_decay: float = 0.9999
    min_decay: float = 0.0
    update_after_step: int = 0


@dataclass(frozen=True)
class TrainSection:
    """`train.*`: optimisation and loop knobs shared by every recipe. `batch_size` is global
    (split evenly across processes)."""

    batch_size: int = 256
    max_steps: int = 20_000
    learning_rate: float = 1e-4
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0
    grad_clip_norm: float = 1.0
    ema: EMAConfig = field(default_factory=EMAConfig)
    amp_bf16: bool = True
    compile: bool = False
    num_threads: int | None = None
    num_workers: int = 0
    checkpoint_every_steps: int = 1000
    checkpoint_format: str = "auto"
    keep_last_checkpoints: int = 2
    log_every_steps: int = 10
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"train.max_steps={self.max_steps} and train.batch_size={self.batch_size} "
                "must be >= 1"
            )
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(
                f"train.warmup_steps={self.warmup_steps} must be >= 0 and "
                f"train.min_lr_ratio={self.min_lr_ratio} in [0, 1]"
            )
        if self.checkpoint_every_steps < 0:
            raise ValueError(f"train.checkpoint_every_steps={self.checkpoint_every_steps}: >= 0")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(
                f"train.checkpoint_format={self.checkpoint_format!r}: one of {CHECKPOINT_FORMATS}"
            )


@dataclass(frozen=True)
class ParallelConfig:
    """`parallel.*`, applied from outside the model by `vla_train.parallel.parallelize`.
    `auto`: DDP under torchrun, else a single process."""

    strategy: str = "auto"
    activation_checkpointing: bool = False
    mixed_bf16: bool = False  # FSDP2: fp32 master weights, bf16 compute, fp32 reductions

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"parallel.strategy={self.strategy!r}: one of {STRATEGIES}")


@dataclass(frozen=True)
class LoggerConfig:
    backend: str = "tensorboard"
    project: str = "vla-train"
    mode: str = "offline"


@dataclass(frozen=True)
class PushTDatasetConfig:
    """`task.dataset.*`: a LeRobot root, or the embedded scripted-expert default (cached)."""

    root: str | None = None
    num_episodes: int = 200
    seed: int = 0
    action_noise: float = 0.0
    image: bool = False
    decision_windows: bool = False
    max_train_episodes: int | None = None


@dataclass(frozen=True)
class TaskConfig:
    """`task.*` (conf/task/pusht_*.yaml)."""

    name: str
    env_obs_type: str
    lowdim_keys: tuple[str, ...]
    image_keys: tuple[str, ...]
    image_shape: tuple[int, int, int]
    crop_shape: tuple[int, int] | None
    action_dim: int
    horizon: int
    n_obs_steps: int
    n_action_steps: int
    dataset: PushTDatasetConfig = field(default_factory=PushTDatasetConfig)
    dagger: DaggerConfig = field(default_factory=DaggerConfig)
    frame: str = "world"
    expert: str = "planner"

    def __post_init__(self) -> None:
        if self.expert not in EXPERTS:
            raise ValueError(f"task.expert={self.expert!r}: expected one of {EXPERTS}")


@dataclass(frozen=True)
class EvalConfig:
    """`eval.*`: gym-pusht rollouts (conf/eval/default.yaml)."""

    n_test: int = 50
    start_seed: int = 100_000
    max_steps: int = 300
    n_envs: int = 10
    every_epochs: int = 0
    n_videos: int = 0
    video_size: int = 256
    use_ema: bool = True
    also_inference_steps: tuple[int, ...] = ()
    standard_episodes: int = 50


@dataclass(frozen=True)
class PushTConfig:
    """The `pusht_imf` recipe's groups: task, policy (IMFPolicyConfig + its `tag`), eval."""

    task: TaskConfig
    policy: IMFPolicyConfig
    policy_tag: str
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True)
class VLAConfig:
    """The `vla_finetune` recipe's `vla.*` block. `synthetic`: kwargs of
    `write_synthetic_dataset`, used when `data.root` is null."""

    policy: PolicyConfig
    data: VLADataConfig
    tokenizer: str | None = None  # None = the offline TinyTokenizer
    export: bool = True
    synthetic: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Everything one run needs. Exactly one of `pusht` / `vla` is set, matching `recipe`.
    `composed` is the resolved Hydra config, saved beside checkpoints for provenance."""

    recipe: str
    train: TrainSection
    run_name: str = "run"
    seed: int = 42
    device: str = "auto"
    resume: bool = False
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    pusht: PushTConfig | None = None
    vla: VLAConfig | None = None
    composed: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe={self.recipe!r}: one of {RECIPES}")
        need = "pusht" if self.recipe == "pusht_imf" else "vla"
        if getattr(self, need) is None:
            raise ValueError(f"recipe={self.recipe} needs its `{need}` section")
        if self.train.ema.enabled and self.parallel.strategy == "fsdp2":
            raise ValueError("train.ema.enabled=true is not supported with parallel.strategy=fsdp2")


def _walk(node: Any, prefix: str) -> list[str]:
    if not isinstance(node, Mapping):
        return [prefix]
    keys = [prefix] if prefix else []
    for k, v in node.items():
        keys += _walk(v, f"{prefix}.{k}" if prefix else str(k))
    return keys


def _check_renamed(raw: Mapping[str, Any]) -> None:
    present = set(_walk(raw, ""))
    if raw.get("mode") == "vla_finetune":
        present.add("mode=vla_finetune")
    old = sorted(k for k in RENAMED if k in present)
    if old:
        moves = ", ".join(f"{k} -> {RENAMED[k]}" for k in old)
        raise ValueError(f"renamed config keys (vla-train CHANGELOG, 'One trainer'): {moves}")


def check_overrides(overrides: Sequence[str]) -> None:
    """Raise naming the new key for a command-line override of a renamed key (`policy.x=1`,
    `+policy.x=1`, `~policy.x`), before Hydra rejects a key its groups no longer define."""
    old = []
    for override in overrides:
        text = override.lstrip("+~")
        key = text.split("=", 1)[0]
        if key in RENAMED:
            old.append(key)
        elif text in RENAMED:
            old.append(text)
    if old:
        moves = ", ".join(f"{k} -> {RENAMED[k]}" for k in old)
        raise ValueError(f"renamed config keys (vla-train CHANGELOG, 'One trainer'): {moves}")


def _build(cls: type, given: Mapping[str, Any] | None, where: str, **fixed: Any) -> Any:
    """`cls(**given, **fixed)`; unknown keys raise naming `where.key`; lists become tuples."""
    data = dict(given or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        names = ", ".join(f"{where}.{k}" for k in unknown)
        raise ValueError(f"unknown config keys {names}; {where} takes {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**{**values, **fixed})
    except TypeError as e:  # a required key is missing
        raise ValueError(f"{where}: {e}") from e


def imf_policy_config(policy: Mapping[str, Any], task: Mapping[str, Any]) -> IMFPolicyConfig:
    """`policy` + `task` groups -> IMFPolicyConfig. The `policy` group stays flat (`backbone`,
    `n_emb`, `n_layer`, `extra.action_patch`, ... beside the policy's fields, so command lines and
    sweeps keep their keys); `IMFPolicyConfig.from_flat` nests the backbone's fields into its
    kind's config and validates, naming `policy.<key>`."""
    extra = dict(policy.get("extra") or {})
    fields = {k: v for k, v in policy.items() if k not in ("tag", "extra")}
    overlap = set(extra) & set(fields)
    if overlap:
        raise ValueError(f"policy.extra repeats keys already set in policy: {sorted(overlap)}")
    fields.update(extra)
    fields.update(
        action_dim=int(task["action_dim"]),
        horizon=int(task["horizon"]),
        n_obs_steps=int(task["n_obs_steps"]),
        n_action_steps=int(task["n_action_steps"]),
        lowdim_keys=tuple(task["lowdim_keys"]),
        image_keys=tuple(task["image_keys"]),
        image_shape=tuple(task["image_shape"]),
        crop_shape=tuple(task["crop_shape"]) if task.get("crop_shape") else None,
    )
    return IMFPolicyConfig.from_flat(fields, where="policy")


def _pusht(raw: Mapping[str, Any]) -> PushTConfig:
    task = dict(raw["task"])
    dataset = _build(PushTDatasetConfig, task.pop("dataset", None), "task.dataset")
    dagger = _build(DaggerConfig, task.pop("dagger", None), "task.dagger")
    task_cfg = _build(TaskConfig, task, "task", dataset=dataset, dagger=dagger)
    policy = dict(raw["policy"])
    return PushTConfig(
        task=task_cfg,
        policy=imf_policy_config(policy, raw["task"]),
        policy_tag=str(policy.get("tag", "policy")),
        eval=_build(EvalConfig, raw.get("eval"), "eval"),
    )


def _vla(raw: Mapping[str, Any]) -> VLAConfig:
    block = dict(raw["vla"])
    policy = dict(block.pop("policy"))
    lora = policy.pop("lora", None)
    pruning = _build(PruningConfig, policy.pop("pruning", None), "vla.policy.pruning")
    policy_cfg = _build(
        PolicyConfig,
        policy,
        "vla.policy",
        lora=None if lora is None else _build(LoRAConfig, lora, "vla.policy.lora"),
        pruning=pruning,
    )
    data = dict(block.pop("data"))
    if data.get("root") is None and block.get("synthetic") is None:
        raise ValueError("vla.data.root is required (or set vla.synthetic to generate a dataset)")
    data["root"] = "" if data.get("root") is None else str(data["root"])
    return _build(
        VLAConfig, block, "vla", policy=policy_cfg, data=_build(VLADataConfig, data, "vla.data")
    )


_COMMON = {"recipe", "train", "run_name", "seed", "device", "resume", "parallel", "logger"}
#: Keys of the Hydra app itself (run directory, report mode), not of a training run.
APP_KEYS = ("mode", "report", "output_root", "sweep_name", "hydra")
_SECTIONS = {"pusht_imf": {"task", "policy", "eval"}, "vla_finetune": {"vla"}}


def from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """The resolved app config (plain containers) -> TrainConfig."""
    _check_renamed(raw)
    raw = {k: v for k, v in raw.items() if k not in APP_KEYS}
    recipe = str(raw.get("recipe", "pusht_imf"))
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r}: one of {RECIPES}")
    unknown = sorted(set(raw) - _COMMON - _SECTIONS[recipe])
    if unknown:
        raise ValueError(
            f"config keys {unknown} are not used by recipe={recipe} (it reads "
            f"{sorted(_COMMON | _SECTIONS[recipe])})"
        )
    train = dict(raw.get("train") or {})
    ema = _build(EMAConfig, train.pop("ema", None), "train.ema")
    return TrainConfig(
        recipe=recipe,
        train=_build(TrainSection, train, "train", ema=ema),
        run_name=str(raw.get("run_name", "run")),
        seed=int(raw.get("seed", 42)),
        device=str(raw.get("device", "auto")),
        resume=bool(raw.get("resume", False)),
        parallel=_build(ParallelConfig, raw.get("parallel"), "parallel"),
        logger=_build(LoggerConfig, raw.get("logger"), "logger"),
        pusht=_pusht(raw) if recipe == "pusht_imf" else None,
        vla=_vla(raw) if recipe == "vla_finetune" else None,
        composed=dict(raw),
    )
