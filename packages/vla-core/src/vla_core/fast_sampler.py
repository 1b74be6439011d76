"""A fixed-shape `sample_actions` for deployment: bf16, torch.compile, one CUDA graph per chunk.

Applied from outside the model (torchtitan style): `compile_sampler(model, example)` returns a
`FastSampler` holding static input buffers shaped like `example`. Each call copies the
observation (and noise) into them, runs the compiled prefix fill, then the denoise loop — on CUDA
replayed from a CUDA graph captured once. The loop is capturable because the prefix KV cache is
never mutated while denoising (`vla_core.engine`) and the per-step time embeddings are computed
once, at build time, with the model's own `time_embedding` (so the step has no host work).
Outputs equal `model.sample_actions(observation, noise, num_steps, time_arithmetic=...)` up to
kernel rounding; a call whose shapes differ from the example raises a `ValueError` naming them.
At batch 1 the denoise loop (num_steps × depth small launches) is launch-bound (reference sheet
§1.8, §14: realtime-vla and Dexmal's CUDA-graph ladder), which is what the graph removes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from vla_core.engine import PrefixCache
from vla_core.fusion import fuse_projections
from vla_core.inputs import Observation
from vla_core.pi0 import PI0Model
from vla_core.time_arithmetic import TimeArithmetic, euler_time_grid

__all__ = ["FastSampler", "compile_sampler", "with_dtype_policy"]

DType = Literal["float32", "bfloat16"]


def with_dtype_policy(model: PI0Model, dtype: DType, *, copy_model: bool = True) -> PI0Model:
    """`model` (or a deep copy) under the dtype policy `dtype`: bf16 weights except the modules
    `model.fp32_modules()` keeps in fp32 (norms, SigLIP patch / position embeddings, time MLP,
    action / state projections), which are not rounded through bf16 on the way.

    Equivalent to building `PI0Model(config.replace(dtype=dtype))` and loading the weights."""
    target = copy.deepcopy(model) if copy_model else model
    target.config = target.config.replace(dtype=dtype)
    compute = target.compute_dtype
    keep = {id(p) for module in target.fp32_modules() for p in module.parameters()}
    keep |= {id(b) for module in target.fp32_modules() for b in module.buffers()}
    with torch.no_grad():
        for tensor in [*target.parameters(), *target.buffers()]:
            wanted = torch.float32 if id(tensor) in keep else compute
            if tensor.is_floating_point() and tensor.dtype != wanted:
                tensor.data = tensor.data.to(wanted)
    return target


@dataclass(frozen=True)
class _TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


def _spec(tensor: Tensor) -> _TensorSpec:
    return _TensorSpec(tuple(tensor.shape), tensor.dtype)


def _observation_tensors(observation: Observation) -> dict[str, Tensor | None]:
    images, image_masks = observation.stacked_images()
    return {
        "images": images,
        "image_masks": image_masks,
        "tokens": observation.tokens,
        "token_mask": observation.token_mask.bool(),
        "state": observation.state,
    }


class FastSampler:
    """`sample_actions` for one fixed set of shapes (build with `compile_sampler`).

    `sampler(observation, noise=None) -> actions [B, H, A] fp32`. State: static input buffers,
    the static prefix cache, the precomputed time embeddings and (CUDA) the captured graph.
    `first_call_s` is the build time (compilation, warm-up, capture) in seconds.
    """

    def __init__(
        self,
        model: PI0Model,
        example: Observation,
        *,
        num_steps: int = 10,
        time_arithmetic: TimeArithmetic = "openpi",
        compile: bool = True,
        compile_backend: str = "inductor",
        compile_mode: str | None = None,
        cuda_graph: bool | None = None,
        capture_prefix: bool = False,
        warmup: int = 2,
        seed: int = 0,
    ) -> None:
        start = time.perf_counter()
        self.model = model.eval()
        inputs = _observation_tensors(example)
        device = inputs["tokens"].device  # type: ignore[union-attr]
        self.device = device
        if cuda_graph is None:
            cuda_graph = device.type == "cuda"
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the example on a CUDA device, got {device}")
        if cuda_graph and compile and compile_mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(
                f"compile_mode={compile_mode!r} captures its own CUDA graphs; with cuda_graph=True "
                "use None / 'default' / 'max-autotune-no-cudagraphs'"
            )
        if capture_prefix and not cuda_graph:
            raise ValueError("capture_prefix=True needs cuda_graph=True")
        if warmup < 1 and cuda_graph:
            raise ValueError(f"a CUDA graph needs warmup >= 1 (side-stream runs), got {warmup}")
        self.num_steps = num_steps
        self.time_arithmetic = time_arithmetic
        self.cuda_graph = cuda_graph
        self.capture_prefix = capture_prefix
        self.compiled = compile

        # Static inputs: the buffers every call copies into (and the graph reads).
        self._specs = {name: _spec(t) for name, t in inputs.items() if t is not None}
        self._static = {name: t.detach().clone() for name, t in inputs.items() if t is not None}
        config = model.config
        batch = int(self._static["tokens"].shape[0])
        self.action_shape = (batch, config.action_horizon, config.action_dim)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        self._noise = torch.randn(self.action_shape, generator=generator).to(device)
        self._actions = torch.zeros(self.action_shape, device=device)
        self._static_observation = Observation(
            images=self._static["images"],
            tokens=self._static["tokens"],
            token_mask=self._static["token_mask"],
            image_masks=self._static["image_masks"],
            state=self._static.get("state"),
        )
        with torch.no_grad():
            self._time_embeddings = [
                model.time_embedding(torch.full((batch,), t, device=device), time_arithmetic)
                for t in euler_time_grid(num_steps, time_arithmetic)
            ]
        self._dt = -1.0 / num_steps
        self._cache: PrefixCache | None = None
        self._suffix_offset: Tensor | None = None

        prefix_fn: Callable[..., Any] = self._prefix_eager
        step_fn: Callable[..., Tensor] = self._step_eager
        if compile:
            prefix_fn = torch.compile(
                prefix_fn, dynamic=False, backend=compile_backend, mode=compile_mode
            )
            step_fn = torch.compile(
                step_fn, dynamic=False, backend=compile_backend, mode=compile_mode
            )
        self._prefix_fn = prefix_fn
        self._step_fn = step_fn
        self._graph: Any = None
        with torch.no_grad():
            if cuda_graph:
                self._capture(warmup)
            else:
                for _ in range(warmup if compile else 0):
                    self._run()
        self.first_call_s = time.perf_counter() - start

    # ---- the two device programs ---------------------------------------------------------------
    def _prefix_eager(
        self, observation: Observation
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor, Tensor, Tensor]:
        prefix = self.model.embed_prefix(observation)
        cache = self.model.fill_prefix_cache(prefix)
        return cache.keys, cache.values, cache.pad_mask, cache.ar_mask, prefix.suffix_offset

    def _step_eager(
        self,
        keys: tuple[Tensor, ...],
        values: tuple[Tensor, ...],
        pad_mask: Tensor,
        ar_mask: Tensor,
        suffix_offset: Tensor,
        state: Tensor | None,
        noisy_actions: Tensor,
        time_emb: Tensor,
    ) -> Tensor:
        cache = PrefixCache(keys, values, pad_mask, ar_mask)
        return self.model.velocity_from_cache(cache, suffix_offset, state, noisy_actions, time_emb)

    def _fill_prefix(self) -> None:
        """Run the prefix into the static cache (allocated by the first run, then only copied)."""
        keys, values, pad_mask, ar_mask, offset = self._prefix_fn(self._static_observation)
        if self._cache is None or self._suffix_offset is None:
            self._cache = PrefixCache(
                tuple(k.clone() for k in keys),
                tuple(v.clone() for v in values),
                pad_mask.clone(),
                ar_mask.clone(),
            )
            self._suffix_offset = offset.clone()
            return
        if tuple(pad_mask.shape) != tuple(self._cache.pad_mask.shape):
            raise ValueError(
                f"prefix length changed: the sampler was built for a prefix "
                f"{tuple(self._cache.pad_mask.shape)} and this observation gives "
                f"{tuple(pad_mask.shape)} (an image-token filter without a fixed budget?); "
                "a FastSampler needs fixed shapes (use a filter with a fixed token budget)"
            )
        for static, new in zip(self._cache.keys, keys):
            static.copy_(new)
        for static, new in zip(self._cache.values, values):
            static.copy_(new)
        self._cache.pad_mask.copy_(pad_mask)
        self._cache.ar_mask.copy_(ar_mask)
        self._suffix_offset.copy_(offset)

    def _denoise(self) -> None:
        """Euler from t = 1 (the static noise) to t = 0 into the static actions buffer."""
        cache, offset = self._cache, self._suffix_offset
        assert cache is not None and offset is not None
        state = self._static.get("state")
        actions = self._noise
        for time_emb in self._time_embeddings:
            velocity = self._step_fn(
                cache.keys,
                cache.values,
                cache.pad_mask,
                cache.ar_mask,
                offset,
                state,
                actions,
                time_emb,
            )
            actions = actions + self._dt * velocity.float()
        self._actions.copy_(actions)

    def _run(self) -> None:
        self._fill_prefix()
        self._denoise()

    def _capture(self, warmup: int) -> None:
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):  # compiles, autotunes and allocates the static cache
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            if self.capture_prefix:
                self._fill_prefix()
            self._denoise()
        self._graph = graph

    # ---- calls ---------------------------------------------------------------------------------
    def _load_inputs(self, observation: Observation, noise: Tensor | None) -> None:
        inputs = _observation_tensors(observation)
        for name, spec in self._specs.items():
            tensor = inputs[name]
            if tensor is None:
                raise ValueError(f"FastSampler was built with {name} {spec.shape}, got None")
            if _spec(tensor) != spec:
                raise ValueError(
                    f"FastSampler was built for {name} of shape {spec.shape} {spec.dtype}, got "
                    f"{tuple(tensor.shape)} {tensor.dtype}; build a new sampler for new shapes"
                )
        for name, tensor in inputs.items():
            if tensor is not None and name not in self._specs:
                raise ValueError(f"FastSampler was built without {name}, got {tuple(tensor.shape)}")
        for name, static in self._static.items():
            static.copy_(inputs[name])  # type: ignore[arg-type]
        if noise is None:
            self._noise.normal_()
        elif tuple(noise.shape) != self.action_shape:
            raise ValueError(
                f"noise must be {self.action_shape} (the sampler's shape), got {tuple(noise.shape)}"
            )
        else:
            self._noise.copy_(noise)

    @torch.no_grad()
    def __call__(
        self, observation: Observation, noise: Tensor | None = None, *, use_graph: bool = True
    ) -> Tensor:
        """Actions [B, H, A] fp32 for `observation` (same shapes and dtypes as the example; it
        may live on another device, e.g. CPU tensors are copied into the device buffers).

        `use_graph=False` launches the same (compiled) programs one by one instead of replaying
        the graph: what benchmarks compare to isolate the graph's effect."""
        self._load_inputs(observation, noise)
        if self._graph is None or not use_graph:
            self._run()
        else:
            if not self.capture_prefix:
                self._fill_prefix()
            self._graph.replay()
        return self._actions.clone()


def compile_sampler(
    model: PI0Model,
    example: Observation,
    *,
    num_steps: int = 10,
    dtype: DType | None = "bfloat16",
    fuse: bool = True,
    compile: bool = True,
    compile_backend: str = "inductor",
    compile_mode: str | None = None,
    cuda_graph: bool | None = None,
    capture_prefix: bool = False,
    time_arithmetic: TimeArithmetic = "openpi",
    copy_model: bool = True,
    warmup: int = 2,
    seed: int = 0,
) -> FastSampler:
    """Build a `FastSampler` for `example`'s shapes (batch, cameras, image size, prompt length).

    - `dtype`: the dtype policy to run in (`"bfloat16"`: bf16 weights, fp32 norms / softmax /
      time embedding / action projections; None = keep the model's);
    - `fuse`: fused q/k/v and gate/up projections (`vla_core.fusion`), a transform of the weights;
    - `compile`: `torch.compile` the prefix fill and the denoise step (`compile_backend`,
      `compile_mode`; `dynamic=False`, the shapes are fixed);
    - `cuda_graph` (default: on when `example` is on CUDA): capture the whole denoise loop in one
      CUDA graph; `capture_prefix` also captures the prefix (needs a prefix with no host sync);
    - `copy_model`: convert / fuse a deep copy (default) rather than `model` itself.
    The model should be on `example`'s device; the sampler runs it in eval mode.
    """
    if dtype is not None and dtype != model.config.dtype:
        model = with_dtype_policy(model, dtype, copy_model=copy_model)
        copy_model = False  # already a private copy (or in place by request)
    if fuse:
        if copy_model:
            model = copy.deepcopy(model)
        fuse_projections(model)
    return FastSampler(
        model,
        example,
        num_steps=num_steps,
        time_arithmetic=time_arithmetic,
        compile=compile,
        compile_backend=compile_backend,
        compile_mode=compile_mode,
        cuda_graph=cuda_graph,
        capture_prefix=capture_prefix,
        warmup=warmup,
        seed=seed,
    )
