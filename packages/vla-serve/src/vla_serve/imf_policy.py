"""Serve a vla-imf policy (e.g. a PushT policy trained by vla-train) from its checkpoint.

A checkpoint directory holds `config.json` (`{"policy": <IMFPolicyConfig as a dict>, ...}`, read by
`IMFPolicyConfig.from_dict`, which also reads older runs' flat form with a DeprecationWarning) and
`model.safetensors` / `ema.safetensors` (the normaliser's statistics are buffers in the weights, so
observations and actions are (un)normalised inside the policy). A vla-train run directory is
accepted too: its `checkpoints/latest` names the checkpoint.

Request: `{key: [n_obs_steps, *shape] or [B, n_obs_steps, *shape]}` for every low-dim and image
key of the config (images CHW float in [0, 1]), optional `"rtc"` (`vla_serve.rtc_request`).
Reply: `{"actions": [n_action_steps, Da] or [B, n_action_steps, Da]}`, unnormalised.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model

from vla_core.rtc import RTCConfig
from vla_imf import IMFPolicy, IMFPolicyConfig
from vla_serve.arrays import float_array, require
from vla_serve.errors import RequestError
from vla_serve.rtc_request import parse_rtc_request

WEIGHT_FILES = {True: "ema.safetensors", False: "model.safetensors"}


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, or a vla-train run dir (-> its `checkpoints/latest`)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    pointer = path / "checkpoints" / "latest"
    if pointer.is_file():
        return path / "checkpoints" / pointer.read_text().strip()
    raise FileNotFoundError(f"{path} has neither config.json nor checkpoints/latest")


def load_imf_policy(
    path: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu"
) -> IMFPolicy:
    """Build the policy from `config.json` and load the safetensors weights strictly."""
    directory = resolve_checkpoint(path)
    payload = json.loads((directory / "config.json").read_text())
    if "policy" not in payload:
        raise KeyError(f"{directory / 'config.json'} has no 'policy' entry")
    frame = ((payload.get("hydra") or {}).get("task") or {}).get("frame", "world")
    if frame != "world":
        # vla-train's `task.frame=block*` policies see observations and emit targets in the T's
        # own frame (vla_train.pusht.frames); served raw they would be driven with world inputs.
        raise ValueError(
            f"{directory / 'config.json'}: trained with task.frame={frame!r}; vla-serve serves "
            "world-frame policies only (train with task.frame=world)"
        )
    config = IMFPolicyConfig.from_dict(payload["policy"])
    weights = directory / WEIGHT_FILES[use_ema]
    if use_ema and not weights.is_file():
        weights = directory / WEIGHT_FILES[False]
    if not weights.is_file():
        raise FileNotFoundError(f"no weights in {directory} (looked for {WEIGHT_FILES[use_ema]})")
    policy = IMFPolicy(config)
    missing, unexpected = load_model(policy, str(weights), strict=False, device=str(device))
    if missing or unexpected:
        raise KeyError(
            f"{weights}: missing keys {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    return policy.to(device).eval()


@dataclass(frozen=True)
class IMFServeConfig:
    """`num_inference_steps`: sampler steps (None = the checkpoint's; RTC needs >= 2 to matter
    beyond the first step). `rtc`: schedule and β for requests that carry `"rtc"`."""

    num_inference_steps: int | None = None
    rtc: RTCConfig = field(default_factory=RTCConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")


class IMFServedPolicy:
    """`infer(observation) -> {"actions": ...}` for one vla-imf policy (not thread-safe: the server
    runs one inference at a time)."""

    def __init__(self, policy: IMFPolicy, config: IMFServeConfig = IMFServeConfig()) -> None:
        self.policy = policy
        self.config = config
        self.device = next(policy.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)

    @property
    def chunk_length(self) -> int:
        """Actions from the first executable step to the end of the predicted window."""
        cfg = self.policy.config
        return cfg.horizon - cfg.n_obs_steps + 1

    def metadata(self) -> dict[str, Any]:
        cfg = self.policy.config
        assert cfg.lowdim_dims is not None
        shapes = {k: [cfg.n_obs_steps, d] for k, d in zip(cfg.lowdim_keys, cfg.lowdim_dims)}
        shapes |= {k: [cfg.n_obs_steps, *cfg.image_shape] for k in cfg.image_keys}
        return {
            "policy": "vla-imf",
            "objective": cfg.objective,
            "observation_shapes": shapes,
            "action_dim": cfg.action_dim,
            "action_horizon": cfg.n_action_steps,
            "chunk_length": self.chunk_length,
            "num_inference_steps": self.config.num_inference_steps or cfg.num_inference_steps,
            "rtc": {
                "prefix_schedule": self.config.rtc.prefix_schedule,
                "max_guidance_weight": self.config.rtc.max_guidance_weight,
            },
        }

    def warmup(self) -> None:
        shapes = self.metadata()["observation_shapes"]
        observation: dict[str, Any] = {k: np.zeros(v, np.float32) for k, v in shapes.items()}
        self.infer(observation)
        previous = np.zeros((self.chunk_length, self.policy.config.action_dim), np.float32)
        rtc = {"previous_action": previous, "inference_delay": 1, "execution_horizon": 0}
        self.infer({**observation, "rtc": rtc})
        self.generator.manual_seed(self.config.seed)

    def infer(self, observation: Mapping[str, Any]) -> dict[str, np.ndarray]:
        cfg = self.policy.config
        assert cfg.lowdim_dims is not None
        tails: dict[str, tuple[int, ...]] = {
            k: (cfg.n_obs_steps, d) for k, d in zip(cfg.lowdim_keys, cfg.lowdim_dims)
        }
        tails |= {k: (cfg.n_obs_steps, *cfg.image_shape) for k in cfg.image_keys}
        arrays = {k: float_array(k, require(observation, k), tail) for k, tail in tails.items()}
        batch = {a.shape[0] for a in arrays.values()}
        if len(batch) != 1:
            raise RequestError(f"observation keys disagree on the batch size: {sorted(batch)}")
        unbatched = all(np.ndim(observation[k]) == len(t) for k, t in tails.items())
        rtc = parse_rtc_request(
            observation, chunk_length=self.chunk_length, action_dim=cfg.action_dim
        )
        obs = {k: torch.from_numpy(a).to(self.device) for k, a in arrays.items()}
        guidance = None
        if rtc is not None:
            previous = torch.from_numpy(rtc.previous_action).to(self.device)
            size = next(iter(batch))
            if previous.shape[0] not in (1, size):
                raise RequestError(
                    f"'rtc.previous_action' has batch {previous.shape[0]}, observations {size}"
                )
            previous = previous.expand(size, -1, -1)
            guidance = self.policy.rtc_guidance(
                previous,
                inference_delay=rtc.inference_delay,
                execution_horizon=rtc.execution_horizon,
                config=self.config.rtc,
            )
        out = self.policy.predict_action(
            obs,
            generator=self.generator,
            num_inference_steps=self.config.num_inference_steps,
            rtc=guidance,
        )
        start = cfg.n_obs_steps - 1
        chunk = out["action_pred"][:, start:].float().cpu().numpy()  # [B, chunk_length, Da]
        actions = out["action"].float().cpu().numpy()
        if unbatched:
            chunk, actions = chunk[0], actions[0]
        return {"actions": actions, "action_chunk": chunk}
