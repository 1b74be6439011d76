"""A synthetic pi0-like prefix: 3 cameras × 16×16 SigLIP-like patches + a padded Gemma prompt.

The pruner is invariant to each token's scale (weightless RMSNorm), so what decides the
selection is the *angular* structure of the embeddings. We model the parts of it that matter:
  - shared components: one "image modality" direction for all patches and one "scene" direction
    per camera (SigLIP patch tokens are strongly anisotropic, pairwise cosine ≈ 0.2–0.5). Shared
    components make every patch's query alike, which is the collapse mechanism of the pi0.5 port;
  - spatial correlation: a Gaussian-blurred noise field over the 16×16 grid (σ = 1.5 patches),
    so neighbouring patches are near-duplicates, plus a small independent per-patch part;
  - a few salient objects per camera (2×2 / 3×3 blobs, larger norm); one of them is grounded in
    the prompt (its direction mixes in the embedding of a prompt word), as a projected SigLIP
    feature of "the red block" would be after co-training;
  - a few outlier channels shared by all image tokens (the "massive activations" of ViTs);
  - language: a fixed Gemma-like vocabulary (entries ~N(0, 0.03²) with a shared anisotropic
    offset) multiplied by √D as pi0's embed_prefix does, prompts of 8–24 real tokens padded to 48
    with the pad token's embedding (id 0), masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Pi0LikePrefix:
    image: Tensor  # [B, C·G², D]
    image_mask: Tensor  # [B, C·G²] bool
    language: Tensor  # [B, T, D]
    language_mask: Tensor  # [B, T] bool
    salient: Tensor  # [B, C·G²] bool, patches covered by an object


def _blur_field(batch: int, grid: int, width: int, sigma: float, g: torch.Generator) -> Tensor:
    """Unit-variance Gaussian random field [B, G, G, D] with correlation length `sigma` patches."""
    noise = torch.randn(batch * width, 1, grid, grid, generator=g)
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    field = F.conv2d(noise, k.view(1, 1, 1, -1), padding=(0, radius))
    field = F.conv2d(field, k.view(1, 1, -1, 1), padding=(radius, 0))
    field = field.view(batch, width, grid, grid).permute(0, 2, 3, 1)
    return field / field.std(dim=(1, 2), keepdim=True).clamp(min=1e-6)


def make_pi0_like_prefix(
    batch: int,
    *,
    num_cameras: int = 3,
    grid: int = 16,
    width: int = 2048,
    prompt_len: int = 48,
    prompt_tokens: tuple[int, int] = (8, 24),
    objects_per_camera: int = 3,
    seed: int = 0,
) -> Pi0LikePrefix:
    g = torch.Generator().manual_seed(seed)
    vocab = 0.03 * (0.4 * torch.randn(1, width, generator=g) + torch.randn(512, width, generator=g))
    lengths = torch.randint(prompt_tokens[0], prompt_tokens[1] + 1, (batch,), generator=g)
    ids = torch.randint(1, 512, (batch, prompt_len), generator=g)
    language_mask = torch.arange(prompt_len)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~language_mask, 0)  # pad token id 0, embedded like any token
    language = vocab[ids] * math.sqrt(width)  # [B, T, D]

    n = grid * grid
    modality = torch.randn(1, 1, 1, width, generator=g)
    outliers = torch.zeros(width)
    outliers[torch.randperm(width, generator=g)[:3]] = 20.0
    image = torch.empty(batch, num_cameras, n, width)
    salient = torch.zeros(batch, num_cameras, grid, grid, dtype=torch.bool)
    for cam in range(num_cameras):  # a few cameras, not the batch: vectorised over samples
        scene = torch.randn(batch, 1, 1, width, generator=g)
        field = _blur_field(batch, grid, width, 1.5, g)
        local = 0.5 * torch.randn(batch, grid, grid, width, generator=g)
        feats = 1.0 * modality + 0.8 * scene + field + local + outliers
        for obj in range(objects_per_camera):
            size = int(torch.randint(2, 4, (1,), generator=g))
            r0, c0 = torch.randint(0, grid - size + 1, (2, batch), generator=g)
            direction = torch.randn(batch, width, generator=g)
            if obj == 0:  # grounded in the prompt: mixes in the first prompt word's embedding
                word = language[:, 0] / language[:, 0].norm(dim=-1, keepdim=True)
                direction = 0.6 * word * math.sqrt(width) + 0.8 * direction
            rows = torch.arange(grid)[None, :]
            in_r = (rows >= r0[:, None]) & (rows < r0[:, None] + size)  # [B, G]
            in_c = (rows >= c0[:, None]) & (rows < c0[:, None] + size)
            blob = in_r[:, :, None] & in_c[:, None, :]  # [B, G, G]
            feats = feats + 2.5 * blob[..., None] * direction[:, None, None, :]
            salient[:, cam] |= blob
        image[:, cam] = feats.reshape(batch, n, width)
    image = image.reshape(batch, num_cameras * n, width)
    return Pi0LikePrefix(
        image=image,
        image_mask=torch.ones(batch, num_cameras * n, dtype=torch.bool),
        language=language,
        language_mask=language_mask,
        salient=salient.reshape(batch, -1),
    )
