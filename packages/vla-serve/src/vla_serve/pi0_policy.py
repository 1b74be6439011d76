"""Serve a vla-core pi0 / pi0.5 model: weights in our, openpi's or lerobot's layout.

Request (openpi's `Observation` field names): `"images": {camera: [H, W, 3] uint8 or [3, H, W]
float in [-1, 1]}` (cameras in config order, `image_size` square), optional `"image_masks":
{camera: bool}`, `"state": [n]` (raw; normalised with `norm_stats.json`), `"tokenized_prompt":
int [L]`, `"tokenized_prompt_mask": bool [L]` (L = max_token_len; the server has no tokenizer),
optional `"rtc"`. Every value may carry a leading batch axis. Reply: `{"actions": [H, n]}`
unnormalised (the padded action dims beyond the statistics are dropped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from vla_core import Observation, PI0Model
from vla_core.filters import ImageTokenFilter
from vla_core.rtc import RTCConfig, RTCGuidance
from vla_core.state_dict import LAYOUTS, load_config, load_state_dict
from vla_serve.arrays import float_array, require
from vla_serve.errors import RequestError
from vla_serve.normalization import NormStats
from vla_serve.rtc_request import parse_rtc_request


def load_pi0(
    config_path: str | Path,
    weights_path: str | Path,
    *,
    layout: str = "vla",
    image_token_filter: ImageTokenFilter | None = None,
    device: str | torch.device = "cpu",
) -> PI0Model:
    """`config.json` (vla-core format) + safetensors weights in `layout` (vla / openpi / lerobot /
    transformers), loaded strictly. A pruning filter (e.g. `vla_prune.ImageTokenPruner`) is
    attached before loading so a learned filter's tensors load too."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    config = load_config(config_path)
    model = PI0Model(config, image_token_filter=image_token_filter)
    load_state_dict(model, load_file(str(weights_path)), layout, strict=True)
    return model.to(device).eval()


@dataclass(frozen=True)
class PI0ServeConfig:
    num_steps: int = 10
    rtc: RTCConfig = field(default_factory=RTCConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")


class PI0ServedPolicy:
    def __init__(
        self,
        model: PI0Model,
        norm_stats: NormStats,
        camera_names: tuple[str, ...],
        config: PI0ServeConfig = PI0ServeConfig(),
    ) -> None:
        if len(camera_names) != model.config.num_cameras:
            raise ValueError(
                f"model has {model.config.num_cameras} cameras, got names {camera_names}"
            )
        self.model = model
        self.norm_stats = norm_stats
        self.camera_names = camera_names
        self.config = config
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)

    def metadata(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "policy": "vla-core",
            "variant": cfg.variant,
            "cameras": list(self.camera_names),
            "image_size": cfg.vision.image_size,
            "max_token_len": cfg.max_token_len,
            "state_dim": self.norm_stats.state.dim,
            "action_dim": self.norm_stats.actions.dim,
            "action_horizon": cfg.action_horizon,
            "chunk_length": cfg.action_horizon,
            "num_steps": self.config.num_steps,
        }

    def warmup(self) -> None:
        cfg = self.model.config
        size = cfg.vision.image_size
        length = int(cfg.max_token_len)  # type: ignore[arg-type]
        observation: dict[str, Any] = {
            "images": {name: np.zeros((size, size, 3), np.uint8) for name in self.camera_names},
            "state": np.zeros(self.norm_stats.state.dim, np.float32),
            "tokenized_prompt": np.zeros(length, np.int64),
            "tokenized_prompt_mask": np.ones(length, bool),
        }
        self.infer(observation)
        previous = np.zeros((cfg.action_horizon, self.norm_stats.actions.dim), np.float32)
        rtc = {"previous_action": previous, "inference_delay": 1, "execution_horizon": 0}
        self.infer({**observation, "rtc": rtc})
        self.generator.manual_seed(self.config.seed)

    def _images(self, observation: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images = require(observation, "images")
        if not isinstance(images, Mapping):
            raise RequestError("'images' must be a map camera -> array")
        size = self.model.config.vision.image_size
        masks = observation.get("image_masks", {})
        if not isinstance(masks, Mapping):
            raise RequestError("'image_masks' must be a map camera -> bool")
        stacked, present = [], []
        for name in self.camera_names:
            key = f"images.{name}"
            if name not in images:
                raise RequestError(f"observation key {key!r} is missing; got {sorted(images)}")
            value = images[name]
            if isinstance(value, np.ndarray) and value.dtype == np.uint8:
                array = float_array(key, value, (size, size, 3))
                array = array.transpose(0, 3, 1, 2) / 127.5 - 1.0
            else:
                array = float_array(key, value, (3, size, size))
            stacked.append(array)
            present.append(
                np.broadcast_to(np.asarray(masks.get(name, True), bool), array.shape[:1])
            )
        return (
            torch.from_numpy(np.stack(stacked, axis=1)).to(self.device),
            torch.from_numpy(np.stack(present, axis=1)).to(self.device),
        )

    def infer(self, observation: Mapping[str, Any]) -> dict[str, np.ndarray]:
        cfg = self.model.config
        images, image_masks = self._images(observation)
        length = int(cfg.max_token_len)  # type: ignore[arg-type]
        tokens = require(observation, "tokenized_prompt")
        mask = require(observation, "tokenized_prompt_mask")
        if not isinstance(tokens, np.ndarray) or tokens.dtype.kind not in "iu":
            raise RequestError("'tokenized_prompt' must be an integer array")
        tokens_2d = tokens.reshape(-1, tokens.shape[-1]) if tokens.ndim else tokens
        mask_2d = np.asarray(mask, bool).reshape(tokens_2d.shape)
        if tokens_2d.shape[-1] != length:
            raise RequestError(f"'tokenized_prompt' must have {length} tokens, got {tokens.shape}")
        state = float_array("state", require(observation, "state"), (self.norm_stats.state.dim,))
        batch = state.shape[0]
        if images.shape[0] != batch or tokens_2d.shape[0] != batch:
            raise RequestError("'images', 'state' and 'tokenized_prompt' disagree on batch size")
        obs = Observation(
            images=images,
            image_masks=image_masks,
            tokens=torch.from_numpy(tokens_2d.astype(np.int64)).to(self.device),
            token_mask=torch.from_numpy(mask_2d).to(self.device),
            state=torch.from_numpy(self.norm_stats.normalize_state(state, cfg.state_dim)).to(
                self.device
            ),
        )
        rtc = parse_rtc_request(
            observation, chunk_length=cfg.action_horizon, action_dim=self.norm_stats.actions.dim
        )
        guidance = None
        if rtc is not None:
            stats = self.norm_stats
            previous = stats.normalize_actions(rtc.previous_action, cfg.action_dim)
            guidance = RTCGuidance.from_previous_chunk(
                torch.from_numpy(previous).to(self.device).expand(batch, -1, -1),
                inference_delay=rtc.inference_delay,
                execution_horizon=rtc.execution_horizon,
                horizon=cfg.action_horizon,
                config=self.config.rtc,
            )
        shape = (batch, cfg.action_horizon, cfg.action_dim)
        noise = torch.randn(shape, generator=self.generator, device=self.device)
        with torch.no_grad():
            actions = self.model.sample_actions(obs, noise, self.config.num_steps, rtc=guidance)
        out = self.norm_stats.unnormalize_actions(actions.float().cpu().numpy())
        unbatched = np.ndim(observation["state"]) == 1
        return {"actions": out[0] if unbatched else out}
