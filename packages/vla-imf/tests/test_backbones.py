"""JVP through every backbone vs central finite differences (float64).

`du/dt` from `jvp_du_dt` (tangents (v, 0, 1) on (z, r, t)) is compared with
`[u(z + εv, r, t + ε) − u(z − εv, r, t − ε)] / 2ε`. sdpa (f64 throughout): ε = 1e-6, bound
1e-8 relative to max|du/dt| (measured ≤ 8e-10). vla-core's eager backend computes logits in fp32 even for f64
inputs, so it uses ε = 1e-3 and a 1e-3 bound (measured ≤ 3e-4).
"""

from __future__ import annotations

import pytest
import torch

from vla_imf import build_backbone, jvp_du_dt
from vla_imf._testing import tiny_backbone_config

CASES = [
    ("vanilla", {}),
    ("vanilla", {"causal_attn": True, "n_cond_layers": 1}),
    ("attnres_full", {}),
    ("attnres_block", {"attnres_block_size": 3}),
    ("attnres_full", {"action_patch": 2}),
    ("vanilla", {"action_patch": 2}),
]


@pytest.mark.parametrize(("kind", "overrides"), CASES)
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_jvp_matches_central_finite_differences(
    kind: str, overrides: dict[str, object], implementation: str
) -> None:
    torch.manual_seed(0)
    cfg = tiny_backbone_config(kind, attention_implementation=implementation, **overrides)
    model = build_backbone(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():  # leave the zero-init regime (pseudo-queries, time path)
            p.add_(0.2 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(3, cfg.horizon, cfg.input_dim, generator=gen, dtype=torch.float64)
    cond = torch.randn(3, cfg.n_obs_steps, cfg.cond_dim, generator=gen, dtype=torch.float64)
    t = 0.3 + 0.6 * torch.rand(3, generator=gen, dtype=torch.float64)
    r = t * torch.rand(3, generator=gen, dtype=torch.float64)
    v = torch.randn(z.shape, generator=gen, dtype=torch.float64)

    def u_fn(zz: torch.Tensor, rr: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return model(zz, rr, tt, cond)

    u, du_dt = jvp_du_dt(u_fn, z, r, t, v)
    eps = 1e-6 if implementation == "sdpa" else 1e-3  # eager: fp32 logits -> larger step
    with torch.no_grad():
        assert torch.allclose(u, u_fn(z, r, t), atol=1e-12)
        fd = (u_fn(z + eps * v, r, t + eps) - u_fn(z - eps * v, r, t - eps)) / (2 * eps)
    scale = du_dt.abs().max().item()
    assert scale > 1e-3  # the derivative is not trivially zero
    err = (du_dt - fd).abs().max().item() / scale
    assert err <= (1e-8 if implementation == "sdpa" else 1e-3), err
