"""Min-max normalisation to [−1, 1] (diffusion_policy's `LinearNormalizer`, `limits` mode).

Statistics are buffers, so they travel in `state_dict` (and safetensors checkpoints). Dimensions
whose range is below `range_eps` map to 0 instead of dividing by ~0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


def _buffer_name(key: str) -> str:
    return key.replace(".", "__")


class MinMaxNormalizer(nn.Module):
    """Per-key affine maps `x ↦ scale·x + offset` with `[min, max] → [−1, 1]`."""

    fitted: Tensor

    def __init__(self, dims: Mapping[str, int], range_eps: float = 1e-4) -> None:
        super().__init__()
        self.keys: tuple[str, ...] = tuple(dims)
        self.dims = dict(dims)
        self.range_eps = range_eps
        names = [_buffer_name(k) for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError(f"normalizer keys collide after sanitising '.': {self.keys}")
        for key, dim in self.dims.items():
            self.register_buffer(f"{_buffer_name(key)}__scale", torch.ones(dim))
            self.register_buffer(f"{_buffer_name(key)}__offset", torch.zeros(dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _params(self, key: str) -> tuple[Tensor, Tensor]:
        if key not in self.dims:
            raise KeyError(f"normalizer has no key {key!r}; known: {self.keys}")
        name = _buffer_name(key)
        return getattr(self, f"{name}__scale"), getattr(self, f"{name}__offset")

    @torch.no_grad()
    def fit(self, stats: Mapping[str, Mapping[str, Tensor | Sequence[float]]]) -> None:
        """`stats[key] = {"min": [dim], "max": [dim]}` for every key."""
        missing = [k for k in self.keys if k not in stats]
        if missing:
            raise KeyError(f"stats are missing keys {missing}; need {self.keys}")
        for key in self.keys:
            entry = stats[key]
            for field_name in ("min", "max"):
                if field_name not in entry:
                    raise KeyError(f"stats[{key!r}] has no {field_name!r}")
            low = torch.as_tensor(entry["min"], dtype=torch.float32).flatten()
            high = torch.as_tensor(entry["max"], dtype=torch.float32).flatten()
            dim = self.dims[key]
            if low.shape != (dim,) or high.shape != (dim,):
                raise ValueError(
                    f"stats[{key!r}] min/max must have {dim} values, got "
                    f"{tuple(low.shape)} / {tuple(high.shape)}"
                )
            if bool((high < low).any()):
                raise ValueError(f"stats[{key!r}] has max < min")
            span = high - low
            flat = span < self.range_eps
            scale = torch.where(flat, torch.ones_like(span), 2.0 / span.clamp_min(self.range_eps))
            offset = torch.where(flat, -low, -1.0 - scale * low)
            buffer_scale, buffer_offset = self._params(key)
            buffer_scale.copy_(scale)
            buffer_offset.copy_(offset)
        self.fitted.fill_(True)

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError("normalizer is not fitted: call fit_normalizer(stats) first")

    def normalize(self, key: str, x: Tensor) -> Tensor:  # [..., dim]
        self._check_fitted()
        scale, offset = self._params(key)
        if x.shape[-1] != scale.shape[0]:
            raise ValueError(f"{key!r} must end in {scale.shape[0]} features, got {tuple(x.shape)}")
        return x * scale.to(x.dtype) + offset.to(x.dtype)

    def unnormalize(self, key: str, y: Tensor) -> Tensor:  # [..., dim]
        self._check_fitted()
        scale, offset = self._params(key)
        if y.shape[-1] != scale.shape[0]:
            raise ValueError(f"{key!r} must end in {scale.shape[0]} features, got {tuple(y.shape)}")
        return (y - offset.to(y.dtype)) / scale.to(y.dtype)
