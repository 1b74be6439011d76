"""Observation encoders: a low-dim MLP and a from-scratch ResNet-18 (GroupNorm) + spatial softmax.

The image path follows diffusion_policy's robomimic encoder for PushT: BasicBlock ResNet-18 with
every BatchNorm replaced by GroupNorm(C/16), no pretrained weights, the average pool replaced by
spatial-softmax keypoints, then a linear layer; random crop in training, center crop in eval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=max(channels // 16, 1), num_channels=channels)


class BasicBlock(nn.Module):
    """Two 3×3 convs with GroupNorm and an identity (or 1×1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = _group_norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                _group_norm(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18 trunk without pooling/fc: `[N, C, H, W] -> [N, 512, H/32, W/32]`."""

    out_channels = 512

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
            _group_norm(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        stages = []
        channels = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(BasicBlock(channels, width, stride), BasicBlock(width, width, 1))
            )
            channels = width
        self.stages = nn.Sequential(*stages)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


class SpatialSoftmax(nn.Module):
    """Keypoints as softmax-weighted mean pixel coordinates in [−1, 1] (Levine et al. 2016).

    `[N, C, H, W] -> [N, 2·K]` via a 1×1 conv to K heat maps (robomimic `SpatialSoftmax`,
    temperature 1).
    """

    def __init__(self, in_channels: int, n_keypoints: int) -> None:
        super().__init__()
        self.keypoint_conv = nn.Conv2d(in_channels, n_keypoints, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        heat = self.keypoint_conv(features)  # [N, K, H, W]
        n, k, h, w = heat.shape
        attention = torch.softmax(heat.flatten(2), dim=-1)  # [N, K, H·W]
        ys = torch.linspace(-1.0, 1.0, h, device=heat.device, dtype=heat.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=heat.device, dtype=heat.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        expected_x = (attention * grid_x.reshape(1, 1, -1)).sum(-1)
        expected_y = (attention * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.stack([expected_x, expected_y], dim=-1).reshape(n, 2 * k)


def crop_images(images: Tensor, crop: Sequence[int], *, random: bool) -> Tensor:
    """Crop `[N, C, H, W]` to `crop = (h, w)`: a random window per image, or the center."""
    n, _, height, width = images.shape
    ch, cw = int(crop[0]), int(crop[1])
    if (ch, cw) == (height, width):
        return images
    if not random:
        top, left = (height - ch) // 2, (width - cw) // 2
        return images[:, :, top : top + ch, left : left + cw]
    tops = torch.randint(0, height - ch + 1, (n,), device=images.device)
    lefts = torch.randint(0, width - cw + 1, (n,), device=images.device)
    rows = tops[:, None] + torch.arange(ch, device=images.device)  # [N, ch]
    cols = lefts[:, None] + torch.arange(cw, device=images.device)  # [N, cw]
    batch_index = torch.arange(n, device=images.device)[:, None, None]
    cropped = images.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2)  # [N, C, ch, cw]


class ImageEncoder(nn.Module):
    """`[N, C, H, W]` images in [0, 1] -> `[N, feature_dim]`; crop, map to [−1, 1], ResNet, keypoints."""

    def __init__(
        self,
        image_shape: Sequence[int],
        crop_shape: Sequence[int] | None,
        n_keypoints: int,
        feature_dim: int,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.crop_shape = tuple(crop_shape) if crop_shape is not None else None
        self.backbone = ResNet18GN(self.image_shape[0])
        self.pool = SpatialSoftmax(ResNet18GN.out_channels, n_keypoints)
        self.proj = nn.Linear(2 * n_keypoints, feature_dim)

    def forward(self, images: Tensor) -> Tensor:
        if self.crop_shape is not None:
            images = crop_images(images, self.crop_shape, random=self.training)
        return self.proj(self.pool(self.backbone(images * 2.0 - 1.0)))


class LowDimEncoder(nn.Module):
    """Normalised low-dim features `[..., in_dim]` -> `[..., feature_dim]` (Linear-Mish-Linear).

    With `fourier_bands > 0` each input x also enters as sin / cos(2^k π x), k < fourier_bands
    (NeRF's positional encoding; Tancik et al., "Fourier Features Let Networks Learn High
    Frequency Functions in Low Dimensional Domains", NeurIPS 2020): a small MLP on raw
    coordinates fits sharp, fine-scale structure slowly, and a policy's decision boundaries and
    final few-pixel corrections are such structure."""

    frequencies: Tensor  # [fourier_bands]: 2^k π, a non-persistent buffer

    def __init__(self, in_dim: int, feature_dim: int, fourier_bands: int = 0) -> None:
        super().__init__()
        self.register_buffer(
            "frequencies", math.pi * 2.0 ** torch.arange(fourier_bands).float(), persistent=False
        )
        self.net = nn.Sequential(
            nn.Linear(in_dim * (1 + 2 * fourier_bands), feature_dim),
            nn.Mish(),
            nn.Linear(feature_dim, feature_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.frequencies.numel():
            angles = (x.unsqueeze(-1) * self.frequencies).flatten(-2)
            x = torch.cat([x, angles.sin(), angles.cos()], dim=-1)
        return self.net(x)
