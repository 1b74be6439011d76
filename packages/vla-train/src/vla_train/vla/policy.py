"""Build (or load) the pi0 / pi0.5 policy to fine-tune and apply the training-time choices from
outside the model: weights, freezing, LoRA and the LightVLA image-token pruner.

`PolicyConfig` (built from `vla.policy` by vla_train.config) becomes vla-core / vla-prune objects
here; activation checkpointing is applied by vla_train.parallel.parallelize.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file
from torch import nn

from vla_core import (
    ENGINE_FAMILIES,
    JointEngineConfig,
    PI0Config,
    PI0Model,
    gemma3_policy_config,
    gemma_config,
    load_config,
    load_state_dict,
    siglip_config,
)
from vla_core.state_dict import CONFIG_FILE, LAYOUTS, WEIGHTS_FILE
from vla_prune import ImageTokenPruner, NoiseSchedule, PrunerConfig
from vla_train.vla.lora import LoRAConfig, apply_lora

__all__ = [
    "FREEZE_MODES",
    "PolicyConfig",
    "PruningConfig",
    "apply_freezing",
    "build_policy",
    "freeze_unreachable",
    "optimizer_param_groups",
    "trainable_parameter_count",
]

# Freeze mode -> the `PI0Model.parameter_groups()` parts it freezes.
FREEZE_GROUPS: dict[str, tuple[str, ...]] = {
    "none": (),
    "vision_tower": ("vision",),
    "backbone": ("language",),
    "expert_only": ("vision", "projector", "language"),
}
FREEZE_MODES = tuple(FREEZE_GROUPS)


@dataclass(frozen=True)
class PruningConfig:
    """LightVLA pruning: a parameter-free `ImageTokenPruner`; during training its noise amplitude
    follows `noise_scale = 1 − step/max_steps` (`NoiseSchedule("linear")`), set every step; in eval
    no noise. `keep_ratio` / `min_keep` guard against an untrained scorer keeping a handful of
    tokens (`min_keep` applies to the adaptive union; set at most one of the two)."""

    enabled: bool = False
    schedule: Literal["linear", "constant", "none"] = "linear"
    max_steps: int | None = None  # None = the run's max_steps
    keep_ratio: float | None = None
    min_keep: int = 0
    mask_task_padding: bool = True

    def pruner_config(self, num_cameras: int) -> PrunerConfig:
        return PrunerConfig(
            mask_task_padding=self.mask_task_padding,
            keep_ratio=self.keep_ratio,
            min_keep=self.min_keep,
            num_cameras=num_cameras,
        )

    def schedule_for(self, run_steps: int) -> NoiseSchedule:
        return NoiseSchedule(self.schedule, max_steps=self.max_steps or run_steps)


@dataclass(frozen=True)
class PolicyConfig:
    """Which model, from where, and what trains.

    `pretrained`: a directory holding `model.safetensors` (+ optional `config.json`) or a
    `.safetensors` file, in `layout` (vla / openpi / lerobot / transformers via vla-core's rename
    maps). When a `config.json` written by vla-core is present it defines the architecture;
    otherwise the presets below do: `family="gemma"` (PaliGemma) takes Gemma presets,
    `family="gemma3"` a Gemma-3 backbone preset (`gemma3_4b`, `gemma3_tiny`) and a matching expert
    preset (`pi07_expert`, `gemma3_tiny_expert`); `vision` may then also be `so400m_14_448`. `dtype` is the parameter dtype policy (bf16 keeps norms and
    projections in fp32, vla-core's policy)."""

    variant: Literal["pi0", "pi05"] = "pi05"
    family: Literal["gemma", "gemma3"] = "gemma"
    backbone: str = "gemma_2b"
    expert: str = "gemma_300m"
    vision: str = "so400m_14"
    num_cameras: int = 3
    action_dim: int = 32
    state_dim: int = 32
    action_horizon: int = 50
    max_token_len: int | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    attention_implementation: str = "sdpa"
    knowledge_insulation: bool = False
    pretrained: str | None = None
    layout: str = "vla"
    freeze: str = "none"
    lora: LoRAConfig | None = None
    pruning: PruningConfig = field(default_factory=PruningConfig)

    def __post_init__(self) -> None:
        if self.freeze not in FREEZE_MODES:
            raise ValueError(
                f"PolicyConfig.freeze must be one of {FREEZE_MODES}, got {self.freeze!r}"
            )
        if self.family not in ENGINE_FAMILIES:
            raise ValueError(
                f"PolicyConfig.family must be one of {ENGINE_FAMILIES}, got {self.family!r}"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"PolicyConfig.layout must be one of {LAYOUTS}, got {self.layout!r}")

    def model_config(self) -> PI0Config:
        """The PI0Config: from the checkpoint's config.json when there is one, else the presets;
        the knobs (attention, dtype, KI) always come from here."""
        knobs = {
            "attention_implementation": self.attention_implementation,
            "dtype": self.dtype,
            "knowledge_insulation": self.knowledge_insulation,
        }
        saved = self._saved_config_path()
        if saved is not None:
            return load_config(saved).replace(**knobs)
        fields: dict[str, Any] = {
            "action_dim": self.action_dim,
            "state_dim": self.state_dim,
            "action_horizon": self.action_horizon,
            "max_token_len": self.max_token_len,
            "num_cameras": self.num_cameras,
            **knobs,
        }
        if self.family == "gemma3":
            return gemma3_policy_config(
                self.variant,
                backbone=self.backbone,
                expert=self.expert,
                vision=self.vision,
                **fields,
            )
        engine = JointEngineConfig(
            backbone=gemma_config(self.backbone), expert=gemma_config(self.expert)
        )
        return PI0Config(
            variant=self.variant, engine=engine, vision=siglip_config(self.vision), **fields
        )

    def _saved_config_path(self) -> Path | None:
        if self.pretrained is None:
            return None
        path = Path(self.pretrained)
        candidate = path / CONFIG_FILE if path.is_dir() else path.with_name(CONFIG_FILE)
        if self.layout == "vla" and candidate.is_file():
            return candidate
        return None

    def weights_path(self) -> Path | None:
        if self.pretrained is None:
            return None
        path = Path(self.pretrained)
        path = path / WEIGHTS_FILE if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"PolicyConfig.pretrained: no weights at {path}")
        return path


def apply_freezing(model: PI0Model, mode: str) -> None:
    """`vision_tower`: SigLIP; `backbone`: the language model (token embedding, backbone streams,
    final backbone norm); `expert_only`: everything but the action expert streams and the action /
    state / time projections (vision, projector, LM). `none` trains everything. The parts come
    from `PI0Model.parameter_groups()` (any engine family)."""
    if mode not in FREEZE_GROUPS:
        raise ValueError(f"freeze mode must be one of {FREEZE_MODES}, got {mode!r}")
    groups = model.parameter_groups()
    for group in FREEZE_GROUPS[mode]:
        for param in groups[group].values():
            param.requires_grad_(False)


def freeze_unreachable(model: PI0Model) -> list[str]:
    """Freeze the parameters the action loss can never reach (`PI0Model.unreachable_parameters()`:
    the last backbone layer's output-only modules and final norm, the whole VLM under knowledge
    insulation), so DDP needs no unused-parameter scan and every trainable parameter has optimizer
    state. Returns the names newly frozen."""
    frozen = []
    for name, param in model.unreachable_parameters().items():
        if param.requires_grad:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def optimizer_param_groups(model: PI0Model) -> list[dict[str, Any]]:
    """One optimizer group per model part (`PI0Model.parameter_groups()`) holding trainable
    parameters, in part order; `name` is the part, so per-part hyperparameters can be set later."""
    groups = []
    for name, params in model.parameter_groups().items():
        trainable = [p for p in params.values() if p.requires_grad]
        if trainable:
            groups.append({"name": name, "params": trainable})
    return groups


def build_policy(
    config: PolicyConfig, *, device: torch.device | str = "cpu", seed: int = 0
) -> PI0Model:
    """Model (seeded init) -> pretrained weights (strict) -> chosen freezing -> LoRA ->
    unreachable parameters frozen -> pruner. Activation checkpointing is a training choice:
    `vla_train.parallel.parallelize` applies it from outside."""
    model_config = config.model_config()
    torch.manual_seed(seed)
    with torch.device(device):
        model = PI0Model(model_config)
    weights = config.weights_path()
    if weights is not None:
        load_state_dict(model, load_file(str(weights), device=str(device)), config.layout)
    apply_freezing(model, config.freeze)
    if config.lora is not None:  # adapted projections freeze their base weight
        apply_lora(model, config.lora)
    freeze_unreachable(model)
    if config.pruning.enabled:
        pruner = ImageTokenPruner(
            model_config.backbone.width, config.pruning.pruner_config(model_config.num_cameras)
        )
        model.set_image_token_filter(pruner)
    return model


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
