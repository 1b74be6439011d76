"""`IMFPolicy`: normaliser + observation encoders + a `u_θ(z, r, t | obs)` backbone.

Windowing follows diffusion_policy: observations `[B, n_obs_steps, …]`, an action window of
`horizon` steps starting at the first observation step, executed actions
`action_pred[:, n_obs_steps-1 : n_obs_steps-1+n_action_steps]`. With `objective="imf"` and
`num_inference_steps=1`, `predict_action` costs one network evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from vla_core.checkpointing import has_activation_checkpointing
from vla_core.rtc import RTCConfig, RTCGuidance
from vla_imf.backbones import build_backbone
from vla_imf.config import IMFPolicyConfig
from vla_imf.encoders import ImageEncoder, LowDimEncoder
from vla_imf.normalizer import MinMaxNormalizer
from vla_imf.objective import (
    AverageVelocityFn,
    LossOutput,
    flow_matching_loss,
    imf_loss,
    sample_euler,
    sample_mean_flow,
)


def _module_name(key: str) -> str:
    return key.replace(".", "__")


class IMFPolicy(nn.Module):
    """One-step (iMF) or k-step (flow matching) action-chunk policy; see `IMFPolicyConfig`."""

    def __init__(self, config: IMFPolicyConfig) -> None:
        super().__init__()
        self.config = config
        assert config.lowdim_dims is not None
        dims = dict(zip(config.lowdim_keys, config.lowdim_dims))
        dims["action"] = config.action_dim
        self.normalizer = MinMaxNormalizer(dims)
        self.lowdim_encoder = (
            LowDimEncoder(
                sum(config.lowdim_dims), config.lowdim_feature_dim, config.lowdim_fourier_bands
            )
            if config.lowdim_keys
            else None
        )
        self.image_encoders = nn.ModuleDict(
            {
                _module_name(key): ImageEncoder(
                    config.image_shape,
                    config.crop_shape,
                    config.n_keypoints,
                    config.image_feature_dim,
                )
                for key in config.image_keys
            }
        )
        self.backbone = build_backbone(config.backbone)
        self.velocity_head = (
            nn.Linear(config.backbone.n_emb, config.action_dim * config.action_patch)
            if config.tangent_source == "v_head"
            else None
        )
        if self.velocity_head is not None:
            nn.init.normal_(self.velocity_head.weight, std=0.02)
            nn.init.zeros_(self.velocity_head.bias)

    # ----------------------------------------------------------------------------- normaliser
    def fit_normalizer(self, stats: Mapping[str, Mapping[str, Tensor | Sequence[float]]]) -> None:
        """`stats[key] = {"min", "max"}` for every low-dim key and "action" (images need none)."""
        self.normalizer.fit(stats)

    # ----------------------------------------------------------------------------- encoders
    def _check_obs(self, obs: Mapping[str, Tensor]) -> int:
        cfg = self.config
        assert cfg.lowdim_dims is not None
        batch: int | None = None
        expected: list[tuple[str, tuple[int, ...]]] = [
            (key, (cfg.n_obs_steps, dim)) for key, dim in zip(cfg.lowdim_keys, cfg.lowdim_dims)
        ]
        expected += [(key, (cfg.n_obs_steps, *cfg.image_shape)) for key in cfg.image_keys]
        for key, tail in expected:
            if key not in obs:
                raise KeyError(f"observation key {key!r} is missing; got {sorted(obs)}")
            value = obs[key]
            if tuple(value.shape[1:]) != tail or not value.is_floating_point():
                raise ValueError(
                    f"{key!r} must be a float tensor [B, {', '.join(map(str, tail))}], got "
                    f"{value.dtype} {tuple(value.shape)}"
                )
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise ValueError(f"{key!r} has batch {value.shape[0]}, expected {batch}")
        assert batch is not None
        return batch

    def encode_observations(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Observation window -> backbone condition `[B, n_obs_steps, cond_dim]`."""
        cfg = self.config
        batch = self._check_obs(obs)
        features: list[Tensor] = []
        for key in cfg.image_keys:
            images = obs[key].flatten(0, 1)  # [B·To, C, H, W]
            encoded = self.image_encoders[_module_name(key)](images)
            features.append(encoded.view(batch, cfg.n_obs_steps, -1))
        if self.lowdim_encoder is not None:
            lowdim = torch.cat(
                [self.normalizer.normalize(key, obs[key]) for key in cfg.lowdim_keys], dim=-1
            )
            features.append(self.lowdim_encoder(lowdim))
        return torch.cat(features, dim=-1)

    # ----------------------------------------------------------------------------- training
    def compute_loss_output(self, batch: Mapping[str, Tensor]) -> LossOutput:
        """Like `compute_loss`, with the prediction, target and sampled times kept."""
        cfg = self.config
        if "action" not in batch:
            raise KeyError("batch has no 'action'")
        action = batch["action"]
        expected = (cfg.horizon, cfg.action_dim)
        if action.dim() != 3 or tuple(action.shape[1:]) != expected:
            raise ValueError(
                f"'action' must be [B, {cfg.horizon}, {cfg.action_dim}], got {tuple(action.shape)}"
            )
        valid_mask = None
        if cfg.objective_config.mask_padding and "action_is_pad" in batch:
            is_pad = batch["action_is_pad"]
            if is_pad.shape != action.shape[:2] or is_pad.dtype != torch.bool:
                raise ValueError(
                    f"'action_is_pad' must be bool {tuple(action.shape[:2])}, got "
                    f"{is_pad.dtype} {tuple(is_pad.shape)}"
                )
            valid_mask = ~is_pad
        cond = self.encode_observations(batch)
        if cond.shape[0] != action.shape[0]:
            raise ValueError(f"observations have batch {cond.shape[0]}, 'action' {action.shape[0]}")
        x = self.normalizer.normalize("action", action)

        def u_fn(z: Tensor, r: Tensor, t: Tensor) -> Tensor:
            # The JVP runs with autocast off: match the condition to z (fp32) in case the
            # encoders ran under autocast.
            return self.backbone(z, r, t, cond.to(z.dtype))

        if cfg.objective == "flow_matching":
            return flow_matching_loss(u_fn, x, cfg.objective_config, valid_mask=valid_mask)
        velocity_fn = None
        if self.velocity_head is not None:
            head = self.velocity_head

            def velocity_fn(z: Tensor, t: Tensor) -> Tensor:
                return head(self.backbone.features(z, t, t, cond.to(z.dtype))).reshape(z.shape)

        def u_rows(rows: slice) -> AverageVelocityFn:
            part = cond[rows]
            return lambda z, r, t: self.backbone(z, r, t, part.to(z.dtype))

        return imf_loss(
            u_fn,
            x,
            cfg.objective_config,
            valid_mask=valid_mask,
            velocity_fn=velocity_fn,
            differentiate_jvp_primal=not has_activation_checkpointing(self.backbone),
            u_rows=u_rows,
        )

    def compute_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Scalar training loss for a batch of observation windows and action chunks."""
        return self.compute_loss_output(batch).loss

    # ----------------------------------------------------------------------------- inference
    @torch.no_grad()
    def predict_action(
        self,
        obs: Mapping[str, Tensor],
        *,
        generator: torch.Generator | None = None,
        num_inference_steps: int | None = None,
        rtc: RTCGuidance | None = None,
    ) -> dict[str, Tensor]:
        """`{"action": [B, n_action_steps, Da], "action_pred": [B, horizon, Da]}`, unnormalised.

        `num_inference_steps` overrides the config's sampler steps for this call (a MeanFlow
        model trained for 1 step can also be sampled on a finer grid, e.g. 2-NFE).
        `rtc` (from `rtc_guidance`) inpaints the chunk onto the previous one (real-time chunking)."""
        cfg = self.config
        steps = cfg.num_inference_steps if num_inference_steps is None else num_inference_steps
        if steps is None or steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        cond = self.encode_observations(obs)
        noise = torch.randn(
            (cond.shape[0], cfg.horizon, cfg.action_dim),
            device=cond.device,
            dtype=cond.dtype,
            generator=generator,
        )

        def u_fn(z: Tensor, r: Tensor, t: Tensor) -> Tensor:
            return self.backbone(z, r, t, cond)

        if cfg.objective == "imf":
            normalized = sample_mean_flow(u_fn, noise, steps, rtc=rtc)
        else:
            normalized = sample_euler(u_fn, noise, steps, rtc=rtc)
        action_pred = self.normalizer.unnormalize("action", normalized)
        start = cfg.n_obs_steps - 1
        return {
            "action": action_pred[:, start : start + cfg.n_action_steps],
            "action_pred": action_pred,
        }

    def rtc_guidance(
        self,
        previous_action: Tensor,
        *,
        inference_delay: int,
        execution_horizon: int,
        config: RTCConfig,
    ) -> RTCGuidance:
        """Real-time-chunking target for `predict_action(rtc=...)`.

        `previous_action [B, K, Da]` (unnormalised): the previous chunk's actions not yet executed,
        `previous_action[:, 0]` due at the step the new `action[:, 0]` is for. The first
        `inference_delay` are frozen, the overlap decays until `(horizon − n_obs_steps + 1) −
        execution_horizon` (the executable tail of `action_pred`); the past steps of the window
        (before `n_obs_steps − 1`) get no guidance."""
        cfg = self.config
        if previous_action.dim() != 3 or previous_action.shape[-1] != cfg.action_dim:
            raise ValueError(
                f"previous_action must be [B, K, {cfg.action_dim}], got "
                f"{tuple(previous_action.shape)}"
            )
        start = cfg.n_obs_steps - 1
        tail = cfg.horizon - start
        guidance = RTCGuidance.from_previous_chunk(
            self.normalizer.normalize("action", previous_action),
            inference_delay=inference_delay,
            execution_horizon=execution_horizon,
            horizon=tail,
            config=config,
        )
        past = guidance.target.new_zeros((previous_action.shape[0], start, cfg.action_dim))
        target = torch.cat([past, guidance.target], dim=1)  # [B, horizon, Da]
        weights = torch.cat([guidance.weights.new_zeros(start), guidance.weights])
        return RTCGuidance(target, weights, config.max_guidance_weight)

    # ----------------------------------------------------------------------------- optimiser
    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(decay, no_decay): only Linear/Conv weights decay; norms, biases, pseudo-queries and
        positional embeddings do not (diffusion_policy / attn-res practice)."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        seen: set[int] = set()
        for module in self.modules():
            for name, param in module.named_parameters(recurse=False):
                if id(param) in seen:
                    continue
                seen.add(id(param))
                is_matrix = isinstance(module, (nn.Linear, nn.Conv2d)) and name == "weight"
                (decay if is_matrix else no_decay).append(param)
        return decay, no_decay

    def configure_optimizers(
        self,
        weight_decay: float = 1e-3,
        learning_rate: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
    ) -> torch.optim.AdamW:
        decay, no_decay = self.parameter_groups()
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)
