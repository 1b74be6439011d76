"""Pins the image / low-dim encoders: ResNet-18 size and shapes, spatial-softmax keypoints,
crops (random in training, center in eval)."""

from __future__ import annotations

import math

import torch
from torch import nn

from vla_imf import ImageEncoder, LowDimEncoder, ResNet18GN, SpatialSoftmax
from vla_imf.encoders import crop_images


def test_resnet18_has_torchvision_trunk_size_and_groupnorm() -> None:
    model = ResNet18GN(3)
    # torchvision resnet18: 11,689,512 parameters, minus fc (512·1000 + 1000) = 11,176,512.
    assert sum(p.numel() for p in model.parameters()) == 11_176_512
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == m.num_channels // 16 for m in norms)
    out = model(torch.randn(2, 3, 84, 84))
    assert out.shape == (2, 512, 3, 3)


def test_spatial_softmax_returns_the_peak_coordinates() -> None:
    pool = SpatialSoftmax(in_channels=1, n_keypoints=1)
    with torch.no_grad():
        pool.keypoint_conv.weight.fill_(1.0)
        pool.keypoint_conv.bias.zero_()
    heat = torch.full((1, 1, 5, 9), -1e4)
    heat[0, 0, 4, 2] = 0.0  # row 4 of 5 -> y = 1, column 2 of 9 -> x = -0.5
    assert torch.allclose(pool(heat), torch.tensor([[-0.5, 1.0]]), atol=1e-6)
    uniform = pool(torch.zeros(1, 1, 5, 9))
    assert torch.allclose(uniform, torch.zeros(1, 2), atol=1e-6)


def test_crops_center_and_random_windows() -> None:
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    center = crop_images(images, (4, 4), random=False)
    assert torch.equal(center, images[:, :, 1:5, 1:5])
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        out = crop_images(images, (4, 4), random=True)
        assert out.shape == (2, 1, 4, 4)
        for n in range(2):
            top = int(out[n, 0, 0, 0] - images[n, 0, 0, 0]) // 6
            left = int(out[n, 0, 0, 0] - images[n, 0, 0, 0]) % 6
            assert torch.equal(out[n], images[n, :, top : top + 4, left : left + 4])
            seen.add((top, left))
    assert len(seen) > 3  # the windows really vary


def test_image_encoder_is_random_in_training_and_deterministic_in_eval() -> None:
    torch.manual_seed(1)
    encoder = ImageEncoder((3, 48, 48), (40, 40), n_keypoints=4, feature_dim=8)
    images = torch.rand(2, 3, 48, 48)
    encoder.eval()
    with torch.no_grad():
        assert torch.equal(encoder(images), encoder(images))
        encoder.train()
        assert not torch.allclose(encoder(images), encoder(images))
        assert not torch.allclose(encoder(images)[0], encoder(images)[1])  # input-dependent
    assert encoder(images).shape == (2, 8)


def test_lowdim_encoder_shapes() -> None:
    assert LowDimEncoder(18, 16)(torch.randn(4, 2, 18)).shape == (4, 2, 16)
    assert LowDimEncoder(18, 16, fourier_bands=6)(torch.randn(4, 2, 18)).shape == (4, 2, 16)


def test_lowdim_fourier_features_are_nerf_positional_encoding() -> None:
    """Input x enters as [x, sin(2^k pi x), cos(2^k pi x)] for k < bands (per coordinate, sines
    then cosines): the first layer's input, rebuilt by hand, gives the same output."""
    torch.manual_seed(0)
    encoder = LowDimEncoder(3, 8, fourier_bands=4)
    assert "frequencies" not in encoder.state_dict()  # derived, not a weight
    x = torch.rand(5, 3) * 2 - 1
    angles = torch.stack([x * math.pi * 2.0**k for k in range(4)], -1).flatten(-2)
    features = torch.cat([x, angles.sin(), angles.cos()], -1)  # [5, 3 + 2 * 12]
    torch.testing.assert_close(encoder(x), encoder.net(features), rtol=0, atol=0)
    assert encoder.net[0].in_features == 3 * (1 + 2 * 4)
