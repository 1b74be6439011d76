"""pi0 / pi0.5: embed the prefix (images + prompt), embed the suffix (state, noisy actions, time),
run the joint engine, project the velocity out. Flow matching as in openpi `pi0.py`:
t=1 is noise, `x_t = t·ε + (1−t)·a`, target `u_t = ε − a`, `t ~ Beta(1.5, 1)·0.999 + 0.001`,
Euler from t=1 to 0 in `num_steps` steps with the prefix K/V cached once.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_core.config import PI0Config
from vla_core.engine import JointEngine, PrefixCache
from vla_core.engine_factory import build_engine
from vla_core.filters import ImageTokenFilter
from vla_core.inputs import Observation, Prefix, Suffix
from vla_core.layers import JointDecoderLayer, RMSNorm
from vla_core.rtc import RTCGuidance, guided_velocity
from vla_core.time_arithmetic import TimeArithmetic, euler_time_grid, posemb_sincos
from vla_core.vision import VisionTower

__all__ = ["PARAMETER_GROUPS", "Observation", "PI0Model", "Prefix", "Suffix", "posemb_sincos"]

# The parts `PI0Model.parameter_groups()` partitions the parameters into.
PARAMETER_GROUPS = ("vision", "projector", "language", "expert", "action", "image_token_filter")
# Top-level modules of the action / state / time projections (pi0 or pi0.5 set).
ACTION_PROJECTIONS = (
    "action_in_proj",
    "action_out_proj",
    "state_proj",
    "action_time_mlp_in",
    "action_time_mlp_out",
    "time_mlp_in",
    "time_mlp_out",
)


class PI0Model(nn.Module):
    """PaliGemma (SigLIP + Gemma) backbone + Gemma action expert, pi0 or pi0.5.

    `forward(observation, actions)` -> per-element flow-matching loss `[B, H, action_dim]`;
    `sample_actions(observation)` -> actions `[B, H, action_dim]`.
    """

    def __init__(
        self, config: PI0Config, *, image_token_filter: ImageTokenFilter | None = None
    ) -> None:
        super().__init__()
        self.config = config
        backbone, expert = config.backbone, config.expert
        attention = config.engine.attention_implementation
        self.vision_tower = VisionTower(config.vision, attention)
        self.multi_modal_projector = nn.Linear(config.vision.width, backbone.width)
        self.embed_tokens = nn.Embedding(backbone.vocab_size, backbone.width)
        cond_dim = expert.width if config.is_pi05 else None
        self.engine: JointEngine = build_engine(config.engine, expert_cond_dim=cond_dim)
        self.action_in_proj = nn.Linear(config.action_dim, expert.width)
        self.action_out_proj = nn.Linear(expert.width, config.action_dim)
        if config.is_pi05:
            self.time_mlp_in = nn.Linear(expert.width, expert.width)
            self.time_mlp_out = nn.Linear(expert.width, expert.width)
        else:
            self.state_proj = nn.Linear(config.state_dim, expert.width)
            self.action_time_mlp_in = nn.Linear(2 * expert.width, expert.width)
            self.action_time_mlp_out = nn.Linear(expert.width, expert.width)
        self.image_token_filter: ImageTokenFilter | None = None
        self.set_image_token_filter(image_token_filter)
        nn.init.normal_(self.embed_tokens.weight, std=backbone.width**-0.5)
        self._apply_dtype_policy()

    # ---- setup -------------------------------------------------------------------------------
    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.config.dtype == "bfloat16" else torch.float32

    def fp32_modules(self) -> list[nn.Module]:
        """Modules kept in fp32 under the bf16 policy: norms, SigLIP patch/position embeddings,
        time MLP and action / state projections (openpi `models_pytorch/gemma_pytorch.py`
        `to_bfloat16_for_selected_params`; OpenTau parity)."""
        names = ["action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in"]
        names += ["action_time_mlp_out", "time_mlp_in", "time_mlp_out"]
        keep: list[nn.Module] = [getattr(self, n) for n in names if hasattr(self, n)]
        keep.append(self.vision_tower.embeddings)
        keep.extend(m for m in self.engine.modules() if isinstance(m, RMSNorm))
        return keep

    def _apply_dtype_policy(self) -> None:
        if self.compute_dtype == torch.float32:
            return
        self.to(self.compute_dtype)
        for module in self.fp32_modules():
            module.to(torch.float32)

    def set_image_token_filter(self, image_token_filter: ImageTokenFilter | None) -> None:
        """Attach (or detach with None) an image-token filter; an nn.Module one is a submodule,
        so its parameters train and save with the model."""
        if image_token_filter is not None and not callable(image_token_filter):
            raise TypeError(f"image_token_filter must be callable, got {type(image_token_filter)}")
        self._modules.pop("image_token_filter", None)
        self.__dict__.pop("image_token_filter", None)
        if isinstance(image_token_filter, nn.Module):
            self.add_module("image_token_filter", image_token_filter)
        else:
            self.__dict__["image_token_filter"] = image_token_filter

    # ---- parameter groups (freezing / optimizer groups are applied from outside) -------------
    def parameter_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """The parameters by part, name -> parameter, a partition of `named_parameters()` (same
        groups for every engine family): `vision` (SigLIP), `projector`, `language` (token
        embedding, every layer's backbone stream, final backbone norm), `expert` (every layer's
        expert stream, final expert norm), `action` (action / state / time projections) and
        `image_token_filter` (a module filter's own parameters)."""
        layers = self._joint_layers()
        token_filter = self.image_token_filter
        modules: dict[str, list[nn.Module]] = {
            "vision": [self.vision_tower],
            "projector": [self.multi_modal_projector],
            "language": [
                self.embed_tokens,
                *(layer.backbone for layer in layers),
                self.engine.backbone_norm,
            ],
            "expert": [*(layer.expert for layer in layers), self.engine.expert_norm],
            "action": [getattr(self, n) for n in ACTION_PROJECTIONS if hasattr(self, n)],
            "image_token_filter": [token_filter] if isinstance(token_filter, nn.Module) else [],
        }
        return {group: self._named(parts) for group, parts in modules.items()}

    def unreachable_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters the action loss can never reach: the last backbone layer's modules that feed
        only prefix outputs (the expert reads the prefix through K/V alone) and the final backbone
        norm; with knowledge insulation (prefix cache detached) also vision, projector and
        language (knowledge insulation: Driess et al. 2025, arXiv:2505.23705)."""
        last = self._joint_layers()[-1].backbone
        unreachable = self._named([*last.output_only_modules(), self.engine.backbone_norm])
        if self.config.knowledge_insulation:
            groups = self.parameter_groups()
            for group in ("vision", "projector", "language"):
                unreachable.update(groups[group])
        order = [name for name, _ in self.named_parameters()]
        return {name: unreachable[name] for name in order if name in unreachable}

    def _joint_layers(self) -> list[JointDecoderLayer]:
        return [cast(JointDecoderLayer, layer) for layer in self.engine.layers]

    def _named(self, modules: list[nn.Module]) -> dict[str, nn.Parameter]:
        """name -> parameter for the parameters of `modules`, in model order."""
        wanted = {id(p) for module in modules for p in module.parameters()}
        return {name: p for name, p in self.named_parameters() if id(p) in wanted}

    # ---- embeddings --------------------------------------------------------------------------
    def embed_images(self, images: Tensor) -> Tensor:
        """images [B, n_cams, 3, H, W] -> image tokens [B, n_cams·patches, Dp]."""
        batch, cams = images.shape[:2]
        tokens = self.vision_tower(images.flatten(0, 1))  # [B·n, patches, Dv]
        tokens = self.multi_modal_projector(tokens)
        return tokens.reshape(batch, cams * tokens.shape[1], tokens.shape[2])

    def embed_prefix(
        self, observation: Observation, image_token_filter: ImageTokenFilter | None = None
    ) -> Prefix:
        """Images (one bidirectional block with the prompt) then language tokens ·√width.

        Positions are those of the unpruned prefix (`cumsum(pad) − 1`); a filter's kept image
        tokens take the position of their `keep_index` (gaps allowed)."""
        token_filter = (
            image_token_filter if image_token_filter is not None else self.image_token_filter
        )
        images, camera_mask = observation.stacked_images()
        batch = images.shape[0]
        tokens, token_mask = observation.tokens, observation.token_mask.bool()
        if (
            tokens.ndim != 2
            or tuple(token_mask.shape) != tuple(tokens.shape)
            or tokens.shape[0] != batch
        ):
            raise ValueError(
                f"tokens / token_mask must both be [B={batch}, T]; got {tuple(tokens.shape)}, "
                f"{tuple(token_mask.shape)}"
            )
        if images.shape[1] != self.config.num_cameras:
            raise ValueError(
                f"observation has {images.shape[1]} cameras, config.num_cameras is "
                f"{self.config.num_cameras} (fill a missing camera with zeros and mask it False)"
            )
        if tokens.shape[1] > self.config.max_token_len:  # type: ignore[operator]
            raise ValueError(
                f"prompt has {tokens.shape[1]} tokens, config.max_token_len is "
                f"{self.config.max_token_len}"
            )
        image_tokens = self.embed_images(images)  # [B, N, Dp]
        num_image = image_tokens.shape[1]
        image_mask = camera_mask.repeat_interleave(num_image // images.shape[1], dim=1)  # [B, N]
        width = self.config.backbone.width
        language = self.embed_tokens(tokens) * torch.tensor(width**0.5, dtype=self.compute_dtype)
        language = language.to(image_tokens.dtype)

        unpruned_pad = torch.cat([image_mask, token_mask], dim=1)
        positions = torch.cumsum(unpruned_pad.long(), dim=1) - 1
        suffix_offset = unpruned_pad.long().sum(dim=1)
        image_positions = positions[:, :num_image]
        if token_filter is not None:
            kept, kept_mask, keep_index = token_filter(
                image_tokens, image_mask, language, token_mask
            )
            if kept.ndim != 3 or kept.shape[0] != batch or kept.shape[2] != image_tokens.shape[2]:
                raise ValueError(
                    f"image_token_filter returned kept_tokens {tuple(kept.shape)}, expected "
                    f"[B={batch}, K, D={image_tokens.shape[2]}]"
                )
            expected = tuple(kept.shape[:2])
            if tuple(kept_mask.shape) != expected or tuple(keep_index.shape) != expected:
                raise ValueError(
                    f"image_token_filter returned kept_mask {tuple(kept_mask.shape)} / keep_index "
                    f"{tuple(keep_index.shape)}, expected {expected}"
                )
            if kept.shape[1] > num_image:
                raise ValueError(f"image_token_filter kept {kept.shape[1]} > {num_image} tokens")
            image_positions = torch.gather(image_positions, 1, keep_index.long())
            image_tokens, image_mask = kept.to(language.dtype), kept_mask.bool()

        prefix_tokens = torch.cat([image_tokens, language], dim=1)
        pad_mask = torch.cat([image_mask, token_mask], dim=1)
        ar_mask = torch.zeros_like(pad_mask)
        prefix_positions = torch.cat([image_positions, positions[:, num_image:]], dim=1)
        return Prefix(prefix_tokens, pad_mask, ar_mask, prefix_positions, suffix_offset)

    def time_embedding(self, time: Tensor, time_arithmetic: TimeArithmetic = "openpi") -> Tensor:
        """Sine-cosine embedding of the flow time: [B] (or [B, H]) -> [..., expert width] fp32."""
        config = self.config
        return posemb_sincos(
            time,
            config.expert.width,
            config.time_min_period,
            config.time_max_period,
            time_arithmetic,
        )

    def embed_suffix(
        self,
        state: Tensor | None,
        noisy_actions: Tensor,
        time: Tensor,
        time_arithmetic: TimeArithmetic = "openpi",
    ) -> Suffix:
        """pi0: [state] + action tokens mixed with the time embedding by an MLP; ar = [1, 1, 0…].
        pi0.5: action tokens only, ar = [1, 0…]; time -> MLP -> AdaRMS cond.
        noisy_actions [B, H, A]; time [B] (or [B, H] per token); `time_arithmetic` see
        `vla_core.time_arithmetic`."""
        time_emb = self.time_embedding(time, time_arithmetic)
        return self.embed_suffix_from_time_embedding(state, noisy_actions, time_emb)

    def embed_suffix_from_time_embedding(
        self, state: Tensor | None, noisy_actions: Tensor, time_emb: Tensor
    ) -> Suffix:
        """`embed_suffix` from a time embedding [B, De] / [B, H, De] computed beforehand."""
        config = self.config
        batch, horizon, _ = noisy_actions.shape
        width = config.expert.width
        action_tokens = self.action_in_proj(noisy_actions.to(self.action_in_proj.weight.dtype))
        device = noisy_actions.device
        if config.is_pi05:
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time_emb))))
            tokens = action_tokens
            num_block_starts = 1
        else:
            if state is None:
                raise ValueError("pi0 needs observation.state [B, state_dim], got None")
            if tuple(state.shape) != (batch, config.state_dim):
                raise ValueError(
                    f"state must be [B={batch}, state_dim={config.state_dim}], got {tuple(state.shape)}"
                )
            cond = None
            state_token = self.state_proj(state.to(self.state_proj.weight.dtype))[:, None, :]
            if time_emb.ndim == 2:
                time_emb = time_emb[:, None, :].expand(batch, horizon, width)
            mixed = torch.cat([action_tokens, time_emb.to(action_tokens.dtype)], dim=-1)
            mixed = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(mixed)))
            tokens = torch.cat([state_token, mixed], dim=1)
            num_block_starts = 2
        tokens = tokens.to(self.compute_dtype)
        pad_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=device)
        # ar = [1]·starts + [0]·rest, built on the device (a CUDA graph cannot capture an H2D copy)
        token_index = torch.arange(tokens.shape[1], device=device)
        ar_mask = (token_index < num_block_starts).expand(batch, -1)
        return Suffix(tokens, pad_mask, ar_mask, cond)

    # ---- engine calls ------------------------------------------------------------------------
    @staticmethod
    def suffix_positions(suffix_offset: Tensor, suffix: Suffix) -> Tensor:
        """`sum(unpruned prefix pad) + cumsum(suffix pad) − 1` -> [B, S] (offset = `Prefix.suffix_offset`)."""
        return suffix_offset[:, None] + torch.cumsum(suffix.pad_mask.long(), dim=1) - 1

    def fill_prefix_cache(self, prefix: Prefix) -> PrefixCache:
        """Run the backbone over the prefix once; post-RoPE K/V per layer."""
        out = self.engine(
            prefix.tokens,
            None,
            pad_mask=prefix.pad_mask,
            ar_mask=prefix.ar_mask,
            positions=prefix.positions,
        )
        assert out.cache is not None
        return out.cache

    def _velocity_from_suffix_out(self, suffix_out: Tensor) -> Tensor:
        horizon = self.config.action_horizon
        return self.action_out_proj(suffix_out[:, -horizon:].to(self.action_out_proj.weight.dtype))

    def denoise_step(
        self,
        cache: PrefixCache,
        prefix: Prefix,
        state: Tensor | None,
        noisy_actions: Tensor,
        time: Tensor,
        time_arithmetic: TimeArithmetic = "openpi",
    ) -> Tensor:
        """One velocity evaluation reading the prefix cache (never mutated). -> [B, H, A] fp32."""
        time_emb = self.time_embedding(time, time_arithmetic)
        return self.velocity_from_cache(cache, prefix.suffix_offset, state, noisy_actions, time_emb)

    def velocity_from_cache(
        self,
        cache: PrefixCache,
        suffix_offset: Tensor,
        state: Tensor | None,
        noisy_actions: Tensor,
        time_emb: Tensor,
    ) -> Tensor:
        """`denoise_step` from a precomputed time embedding (device work only: what the fast sampler
        compiles and captures); `suffix_offset` [B] = `Prefix.suffix_offset`."""
        suffix = self.embed_suffix_from_time_embedding(state, noisy_actions, time_emb)
        out = self.engine(
            None,
            suffix.tokens,
            pad_mask=suffix.pad_mask,
            ar_mask=suffix.ar_mask,
            positions=self.suffix_positions(suffix_offset, suffix),
            cache=cache,
            expert_cond=suffix.cond,
        )
        assert out.suffix is not None
        return self._velocity_from_suffix_out(out.suffix)

    def predict_velocity(
        self,
        observation: Observation,
        noisy_actions: Tensor,
        time: Tensor,
        *,
        mode: Literal["joint", "cached"] = "joint",
        detach_cache: bool = False,
        time_arithmetic: TimeArithmetic = "openpi",
    ) -> Tensor:
        """v(x_t, t) [B, H, A]: `joint` = one `[prefix, suffix]` pass with the full 2-D mask;
        `cached` = prefix pass filling the K/V cache, then the suffix pass reading it
        (`detach_cache` = knowledge insulation)."""
        prefix = self.embed_prefix(observation)
        if mode == "cached":
            cache = self.fill_prefix_cache(prefix)
            if detach_cache:
                cache = cache.detach()
            return self.denoise_step(
                cache, prefix, observation.state, noisy_actions, time, time_arithmetic
            )
        if mode != "joint":
            raise ValueError(f"mode must be 'joint' or 'cached', got {mode!r}")
        suffix = self.embed_suffix(observation.state, noisy_actions, time, time_arithmetic)
        out = self.engine(
            prefix.tokens,
            suffix.tokens,
            pad_mask=torch.cat([prefix.pad_mask, suffix.pad_mask], dim=1),
            ar_mask=torch.cat([prefix.ar_mask, suffix.ar_mask], dim=1),
            positions=torch.cat(
                [prefix.positions, self.suffix_positions(prefix.suffix_offset, suffix)], dim=1
            ),
            expert_cond=suffix.cond,
        )
        assert out.suffix is not None
        return self._velocity_from_suffix_out(out.suffix)

    # ---- training ----------------------------------------------------------------------------
    def sample_time(self, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        """t ~ Beta(α, β)·scale + offset (sampled on CPU: some backends lack Dirichlet)."""
        config = self.config
        beta = torch.distributions.Beta(
            torch.tensor(config.time_beta_alpha), torch.tensor(config.time_beta_beta)
        )
        time = beta.sample((batch_size,)) * config.time_scale + config.time_offset
        return time.to(device=device, dtype=torch.float32)

    def forward(
        self,
        observation: Observation,
        actions: Tensor,
        noise: Tensor | None = None,
        time: Tensor | None = None,
    ) -> Tensor:
        """Flow-matching loss per element `[B, H, action_dim]` (take `.mean()` for a scalar).

        pi0 trains with one joint pass; pi0.5 with prefix cache + suffix pass (openpi / OpenTau),
        detaching the cache when `config.knowledge_insulation`."""
        config = self.config
        expected = (observation.batch_size, config.action_horizon, config.action_dim)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must be [B, H, A] = {expected}, got {tuple(actions.shape)}")
        actions = actions.float()
        noise = torch.randn_like(actions) if noise is None else noise.float()
        if time is None:
            time = self.sample_time(actions.shape[0], actions.device)
        t = time.float()[:, None, None] if time.ndim == 1 else time.float()[..., None]
        noisy_actions = t * noise + (1.0 - t) * actions
        target = noise - actions
        mode: Literal["joint", "cached"] = "cached" if config.is_pi05 else "joint"
        velocity = self.predict_velocity(
            observation,
            noisy_actions,
            time,
            mode=mode,
            detach_cache=config.knowledge_insulation,
        )
        return (velocity.float() - target) ** 2

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample_actions(
        self,
        observation: Observation,
        noise: Tensor | None = None,
        num_steps: int = 10,
        *,
        time_arithmetic: TimeArithmetic = "openpi",
        rtc: RTCGuidance | None = None,
    ) -> Tensor:
        """Prefix once, then `num_steps` Euler steps from t=1 (noise) to t=0. -> [B, H, A] fp32.

        `rtc` inpaints the chunk onto the previous one (real-time chunking, `vla_core.rtc`): every
        step then costs one extra backward pass through the action expert.

        `time_arithmetic="openpi"` (default) reproduces openpi's float32 time grid (`t += dt`) and
        time embedding, as the models converted from openpi checkpoints were trained; `"exact"`
        uses `t_k = 1 − k/N` and a float64 embedding (see `vla_core.time_arithmetic`)."""
        times = euler_time_grid(num_steps, time_arithmetic)
        config = self.config
        batch = observation.batch_size
        device = observation.tokens.device
        shape = (batch, config.action_horizon, config.action_dim)
        if noise is None:
            noise = torch.randn(shape, device=device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must be {shape}, got {tuple(noise.shape)}")
        prefix = self.embed_prefix(observation)
        cache = self.fill_prefix_cache(prefix)
        dt = -1.0 / num_steps
        actions = noise.float()
        for t in times:
            time = torch.full((batch,), t, dtype=torch.float32, device=device)

            def velocity_fn(x_t: Tensor, time: Tensor = time) -> Tensor:
                return self.denoise_step(
                    cache, prefix, observation.state, x_t, time, time_arithmetic
                ).float()

            if rtc is None:
                velocity = velocity_fn(actions)
            else:
                velocity = guided_velocity(velocity_fn, actions, float(t), rtc)
            actions = actions + dt * velocity
        return actions
