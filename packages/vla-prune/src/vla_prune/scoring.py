"""LightVLA's parameter-free patch-vs-query score (modeling_prismatic.py, TokenPruner.get_score).

Every image patch asks the task tokens a question (single-head cross-attention over the full
width, no projections); the RMS-normalised answer is the patch's query, and the score of query i
for candidate patch j is `q̂_i · p̂_j / √D`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

RMS_EPS = 1e-6


def rms_norm(x: Tensor, eps: float = RMS_EPS) -> Tensor:
    """Weightless RMSNorm over the last dim, computed in fp32 and cast back (LightVLA rms_norm)."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return x32.to(x.dtype)


def lightvla_scores(
    patches: Tensor,
    task: Tensor,
    task_mask: Tensor | None = None,
    *,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """Score matrix `[B, N, N]`: rows are queries (one per patch), columns candidate patches.

    patches [B, N, D], task [B, T, D], task_mask [B, T] bool (True = real token) or None to
    attend every task token as the reference does. A sample whose task mask is all False
    attends all its task tokens (an all-masked softmax would be NaN). `compute_dtype` (e.g.
    fp32 for bf16 inputs) sets the dtype of the SDPA and the score matmul; by default it is the
    input dtype, as in the reference.
    """
    dtype = compute_dtype or patches.dtype
    p_hat = rms_norm(patches.to(dtype))  # [B, N, D]
    t_hat = rms_norm(task.to(dtype))  # [B, T, D]
    attn_mask = None
    if task_mask is not None:
        # No real token at all -> attend everything rather than produce NaN queries.
        mask = task_mask | ~task_mask.any(dim=-1, keepdim=True)  # [B, T]
        attn_mask = mask[:, None, :]  # [B, 1, T] broadcasts over the N queries
    queries = F.scaled_dot_product_attention(p_hat, t_hat, t_hat, attn_mask=attn_mask)
    q_hat = rms_norm(queries)  # [B, N, D]
    return q_hat @ p_hat.transpose(-2, -1) * (1.0 / math.sqrt(patches.shape[-1]))
