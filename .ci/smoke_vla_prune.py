"""Smoke use of the vla-prune wheel in a venv that holds nothing but torch and it.

Imports the wheel, then really prunes a random batch in eval (shorter, padded, masked) and in
train (length unchanged, gradient reaches the inputs), checking shapes and invariants.
"""

import importlib.util

import torch

import vla_prune

for absent in ("transformers", "jax", "hydra", "vla_core"):
    assert importlib.util.find_spec(absent) is None, f"{absent} leaked into the pip venv"
assert vla_prune.__version__ == "0.1.0", vla_prune.__version__

torch.manual_seed(0)
B, N, T, D = 2, 3 * 64, 12, 128
image = torch.randn(B, N, D, requires_grad=True)
image_mask = torch.ones(B, N, dtype=torch.bool)
image_mask[1, 64:128] = False  # sample 1 misses its second camera
task = torch.randn(B, T, D, requires_grad=True)
task_mask = torch.arange(T)[None, :] < torch.tensor([[T], [5]])  # sample 1 has a padded prompt

pruner = vla_prune.ImageTokenPruner(D, vla_prune.PrunerConfig(min_keep=4, pad_to_multiple=8))
kept, kept_mask, keep_index = pruner.eval()(image, image_mask, task, task_mask)
K = kept.shape[1]
assert kept.shape == (B, K, D) and kept_mask.shape == keep_index.shape == (B, K), kept.shape
assert 4 <= K < N and K % 8 == 0, K
assert image_mask.gather(1, keep_index)[kept_mask].all(), "kept an invalid token"
counts = pruner.last_stats.kept_count.tolist()

out, train_mask, choice = pruner.train()(image, image_mask, task, task_mask)
assert out.shape == (B, N, D) and train_mask.shape == choice.shape == (B, N)
out.square().sum().backward()
assert image.grad is not None and task.grad is not None and task.grad.abs().sum() > 0
print(f"vla_prune {vla_prune.__version__} beside torch only: {N} -> K={K} tokens, kept {counts}")
