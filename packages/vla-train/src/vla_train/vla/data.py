"""LeRobot v3 frames -> pi0 / pi0.5 training samples.

One sample per frame: every camera resized to the model's square image size in [-1, 1],
state and the next `action_horizon` actions normalised from `meta/stats.json` and zero-padded to
the model's width (32) with masks, and the prompt tokenised. Actions past the episode end repeat
the last action and are masked out of the loss (lerobot's `action_is_pad`).
Normalisation: `mean_std` (`(x − mean) / std`) or `quantiles` (`q01/q99` -> [-1, 1], openpi's
pi0.5 default), with `min`/`max` as the quantile fallback when a dataset has no q01/q99.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from vla_core import Observation
from vla_train.data import read_frames, read_stats
from vla_train.data.layout import TASKS_PATH
from vla_train.data.video import DEFAULT_TOLERANCE_S
from vla_train.vla.tokenizer import PromptTokenizer, pi0_prompt, pi05_prompt, tokenize_prompts

__all__ = ["Batch", "Normalizer", "VLADataConfig", "VLADataset", "collate"]

NORMALIZATIONS = ("mean_std", "quantiles")


@dataclass(frozen=True)
class VLADataConfig:
    """Where the data is and how to shape it. `camera_keys=None` takes every image or video
    feature in `info.json` order; the model's `num_cameras` must match. `tolerance_s` is how far
    (seconds) a decoded video frame may be from a row's timestamp (lerobot's default 1e-4)."""

    root: str
    camera_keys: tuple[str, ...] | None = None
    state_key: str = "observation.state"
    action_key: str = "action"
    normalization: Literal["mean_std", "quantiles"] = "mean_std"
    default_prompt: str | None = None  # used when the dataset has no tasks.parquet
    tolerance_s: float = DEFAULT_TOLERANCE_S

    def __post_init__(self) -> None:
        if not self.tolerance_s > 0:
            raise ValueError(f"VLADataConfig.tolerance_s must be > 0, got {self.tolerance_s!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"VLADataConfig.normalization must be one of {NORMALIZATIONS}, "
                f"got {self.normalization!r}"
            )


class Normalizer:
    """Per-dimension affine map from stats: `normalize(x) = (x − center) / scale`."""

    def __init__(self, stats: dict[str, np.ndarray], mode: str, key: str) -> None:
        if mode == "mean_std":
            need = ("mean", "std")
            center, scale = stats.get("mean"), stats.get("std")
        elif mode == "quantiles":
            low = stats.get("q01", stats.get("min"))
            high = stats.get("q99", stats.get("max"))
            need = ("q01|min", "q99|max")
            center = None if low is None or high is None else (low + high) / 2
            scale = None if low is None or high is None else (high - low) / 2
        else:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")
        if center is None or scale is None:
            raise KeyError(f"stats.json entry {key!r} lacks {need} for {mode} normalisation")
        self.center = np.asarray(center, dtype=np.float64).reshape(-1)
        self.scale = np.maximum(np.asarray(scale, dtype=np.float64).reshape(-1), 1e-6)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.center) / self.scale).astype(np.float32)

    def unnormalize(self, x: Tensor) -> Tensor:
        center = torch.as_tensor(self.center, dtype=x.dtype, device=x.device)
        scale = torch.as_tensor(self.scale, dtype=x.dtype, device=x.device)
        return x[..., : len(self.center)] * scale + center


def _read_tasks(root: Path) -> dict[int, str]:
    path = root / TASKS_PATH
    if not path.is_file():
        return {}
    table = pq.read_table(path)
    return {
        int(i): str(t) for i, t in zip(table["task_index"].to_pylist(), table["task"].to_pylist())
    }


class VLADataset(Dataset[dict[str, Tensor]]):
    """`ds[i]` -> images [C, 3, S, S] in [-1, 1], image_mask [C], state [P], state_mask [P],
    actions [H, P], action_mask [H, P] (valid dim AND inside the episode), tokens / token_mask [T].
    P = `pad_dim` (the model's action/state width), H = `action_horizon`, T = `max_token_len`."""

    def __init__(
        self,
        config: VLADataConfig,
        *,
        tokenizer: PromptTokenizer,
        image_size: int,
        action_horizon: int,
        pad_dim: int,
        max_token_len: int,
        variant: Literal["pi0", "pi05"],
    ) -> None:
        root = Path(config.root)
        frames = read_frames(root, tolerance_s=config.tolerance_s)
        self.frames = frames
        cameras = config.camera_keys
        if cameras is None:
            cameras = tuple(frames.images)
        missing = [k for k in (*cameras, config.state_key, config.action_key)
                   if k not in frames.images and k not in frames.columns]  # fmt: skip
        if missing:
            raise KeyError(
                f"{root}: features {missing} not in the dataset ({sorted(frames.features)})"
            )
        if not cameras:
            raise ValueError(
                f"{root}: no image features; VLA fine-tuning needs at least one camera"
            )
        self.camera_keys = tuple(cameras)
        self.state = frames.columns[config.state_key].astype(np.float64)
        self.actions = frames.columns[config.action_key].astype(np.float64)
        for key, values in ((config.state_key, self.state), (config.action_key, self.actions)):
            if values.shape[1] > pad_dim:
                raise ValueError(f"{key} has {values.shape[1]} dims > model width {pad_dim}")
        stats = read_stats(root)
        for key in (config.state_key, config.action_key):
            if key not in stats:
                raise KeyError(f"{root}/meta/stats.json has no entry for {key!r}")
        self.state_norm = Normalizer(
            stats[config.state_key], config.normalization, config.state_key
        )
        self.action_norm = Normalizer(
            stats[config.action_key], config.normalization, config.action_key
        )
        self.tasks = _read_tasks(root)
        self.task_index = frames.columns["task_index"][:, 0]
        self.default_prompt = config.default_prompt
        self.episode_end = np.empty(frames.num_frames, dtype=np.int64)
        for ep in frames.episodes:
            self.episode_end[frames.episode_from[ep] : frames.episode_to[ep]] = frames.episode_to[
                ep
            ]
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.action_horizon = action_horizon
        self.pad_dim = pad_dim
        self.max_token_len = max_token_len
        self.variant = variant

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def state_dim(self) -> int:
        return int(self.state.shape[1])

    def __len__(self) -> int:
        return self.frames.num_frames

    def task(self, i: int) -> str:
        index = int(self.task_index[i])
        if index in self.tasks:
            return self.tasks[index]
        if self.default_prompt is None:
            raise KeyError(
                f"frame {i}: task_index {index} not in tasks.parquet and no default_prompt"
            )
        return self.default_prompt

    def _images(self, i: int) -> Tensor:
        frames = [self.frames.images[k].get(np.array([i]))[0] for k in self.camera_keys]
        images = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear",
                align_corners=False, antialias=True,
            )  # fmt: skip
        return images.clamp(0.0, 1.0) * 2.0 - 1.0  # [C, 3, S, S]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        horizon, pad = self.action_horizon, self.pad_dim
        state = self.state_norm.normalize(self.state[i])
        rows = np.arange(i, i + horizon)
        inside = rows < self.episode_end[i]
        rows = np.minimum(rows, self.episode_end[i] - 1)
        actions = self.action_norm.normalize(self.actions[rows])  # [H, A]
        padded_state = torch.zeros(pad)
        padded_state[: len(state)] = torch.from_numpy(state)
        state_mask = torch.arange(pad) < len(state)
        padded_actions = torch.zeros(horizon, pad)
        padded_actions[:, : actions.shape[1]] = torch.from_numpy(actions)
        action_mask = torch.from_numpy(inside)[:, None] & (torch.arange(pad) < actions.shape[1])
        task = self.task(i)
        prompt = pi05_prompt(task, state) if self.variant == "pi05" else pi0_prompt(task)
        tokenized = tokenize_prompts(self.tokenizer, [prompt], self.max_token_len)
        return {
            "images": self._images(i),
            "image_mask": torch.ones(len(self.camera_keys), dtype=torch.bool),
            "state": padded_state,
            "state_mask": state_mask,
            "actions": padded_actions,
            "action_mask": action_mask,
            "tokens": tokenized.tokens[0],
            "token_mask": tokenized.mask[0],
        }


@dataclass
class Batch:
    observation: Observation
    actions: Tensor  # [B, H, P]
    action_mask: Tensor  # [B, H, P] bool

    def to(self, device: torch.device) -> Batch:
        obs = self.observation
        assert isinstance(obs.images, Tensor) and isinstance(obs.image_masks, Tensor)
        return Batch(
            Observation(
                images=obs.images.to(device),
                tokens=obs.tokens.to(device),
                token_mask=obs.token_mask.to(device),
                image_masks=obs.image_masks.to(device),
                state=None if obs.state is None else obs.state.to(device),
            ),
            self.actions.to(device),
            self.action_mask.to(device),
        )


def collate(samples: list[dict[str, Tensor]]) -> Batch:
    stacked = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    observation = Observation(
        images=stacked["images"],
        tokens=stacked["tokens"],
        token_mask=stacked["token_mask"],
        image_masks=stacked["image_mask"],
        state=stacked["state"],
    )
    return Batch(observation, stacked["actions"], stacked["action_mask"])
