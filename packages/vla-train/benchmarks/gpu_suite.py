"""The GPU suite: one command, every number issue #21 asks for, JSON + a markdown table.

Sections (each with a time budget; rows past it are recorded as skipped, and the JSON is rewritten
after every row, so a run killed by a timeout still leaves its results):
- sampling: full-size pi0 and pi0.5 `sample_actions`, batch 1, 3 cameras, 48 prompt tokens, 10
  steps, bf16 — eager / compiled (`vla_core.compile_sampler`, launches one by one) / CUDA graph
  (the same compiled programs replayed); first-call time; FLOP utilisation (FLOPs from
  `vla_core.measure_sample_actions_flops` ÷ time ÷ the GPU's peak bf16, see `_suite.py`);
- pruned: pi0.5 with LightVLA pruning (`vla_prune.ImageTokenPruner`, keep_ratio 0.1 per camera);
- finetune: full-size pi0.5 train step (forward + backward + AdamW), batch 4, sdpa, bf16,
  activation checkpointing off / on: step time and peak memory;
- imf: iMF PushT train-step throughput (low-dim batch 256, image batch 64; vla-imf defaults).
It lives in vla-train because it composes vla-core, vla-prune and vla-imf (vla-core may not
import its siblings). `--tiny` runs every code path on tiny configs in seconds (CPU: fp32,
dynamo with the aot_eager backend, CUDA-graph rows skipped); tests/test_gpu_suite.py runs it.

    uv run python packages/vla-train/benchmarks/gpu_suite.py --out /tmp/vla_gpu_suite.json
    uv run python packages/vla-train/benchmarks/gpu_suite.py --tiny --out /tmp/vla_gpu_suite_tiny.json
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch
from _suite import (
    Recorder,
    free_memory,
    markdown_report,
    median_ms,
    peak_bf16_tflops,
    peak_bytes,
    reset_peak,
    timed_s,
)

from vla_core import (
    JointDecoderLayer,
    PI0Config,
    PI0Model,
    apply_activation_checkpointing,
    compile_sampler,
    measure_sample_actions_flops,
)
from vla_core._testing import perturb_adarms, random_actions, random_observation, tiny_pi0_config
from vla_imf import IMFPolicy, IMFPolicyConfig
from vla_imf._testing import pusht_stats, random_batch, tiny_policy_config
from vla_prune import ImageTokenPruner, PrunerConfig

BUDGETS_S = {"sampling": 270.0, "pruned": 90.0, "finetune": 60.0, "imf": 30.0}
TOTAL_BUDGET_S = 470.0
CAMERAS, PROMPT, STEPS = 3, 48, 10


class Setting:
    """Sizes, dtype, compile backend and repeat counts of one run (full or tiny)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.tiny = args.tiny
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        self.dtype = "bfloat16" if self.cuda else "float32"  # CPU: fp32 (tiny smoke only)
        self.compile_backend = "inductor" if self.cuda else "aot_eager"
        self.warmup, self.repeats = (1, 2) if self.tiny else (3, 10)
        self.train_batch = 4
        self.device_name = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        self.peak_tflops = peak_bf16_tflops(self.device_name) if self.cuda else None

    def policy_config(self, variant: str) -> PI0Config:
        if self.tiny:
            config = tiny_pi0_config(variant, attention_implementation="sdpa", num_cameras=CAMERAS)
            return config.replace(dtype=self.dtype)
        return PI0Config(
            variant=variant, num_cameras=CAMERAS, max_token_len=PROMPT, dtype=self.dtype,
            attention_implementation="sdpa",
        )  # fmt: skip

    def build(self, config: PI0Config, seed: int = 0) -> PI0Model:
        torch.manual_seed(seed)
        with self.device:
            model = PI0Model(config)
        perturb_adarms(model)  # a zero AdaRMS would make pi0.5 ignore time
        return model


def utilisation(flops: int | None, ms: float, setting: Setting) -> dict[str, Any]:
    if flops is None:
        return {"flops": None, "tflops_per_s": None, "utilisation": None}
    tflops = flops / (ms * 1e-3) / 1e12
    peak = setting.peak_tflops
    return {
        "flops": flops,
        "tflops_per_s": tflops,
        "utilisation": None if peak is None else tflops / peak,
    }


def sampling_rows(rec: Recorder, setting: Setting, model: PI0Model, label: str, flops) -> None:
    """eager / compiled / cuda_graph rows for one model (the graph replays the compiled code)."""
    device = setting.device
    obs = random_observation(model.config, batch_size=1, device=device)
    noise = torch.randn(1, model.config.action_horizon, model.config.action_dim, device=device)
    state: dict[str, Any] = {}

    def eager() -> dict[str, Any]:
        actions, first = timed_s(lambda: model.sample_actions(obs, noise, STEPS), device)
        state["eager_actions"] = actions
        ms = median_ms(lambda: model.sample_actions(obs, noise, STEPS), device, 1, setting.repeats)
        state["eager_ms"] = ms
        return {"latency_ms": ms, "first_call_s": first, **utilisation(flops, ms, setting)}

    def build_sampler() -> Any:
        fused = copy.deepcopy(model) if setting.tiny else model  # full size: fuse in place
        return compile_sampler(
            fused, obs, num_steps=STEPS, dtype=None, compile_backend=setting.compile_backend,
            cuda_graph=setting.cuda, copy_model=setting.tiny,
        )  # fmt: skip

    def compiled() -> dict[str, Any]:
        sampler, build_s = timed_s(build_sampler, device)
        state["sampler"] = sampler
        actions, first = timed_s(lambda: sampler(obs, noise, use_graph=False), device)
        ms = median_ms(lambda: sampler(obs, noise, use_graph=False), device, 1, setting.repeats)
        state["compiled_ms"] = ms
        return {
            "latency_ms": ms,
            "first_call_s": build_s + first,
            "speedup_vs_eager": state["eager_ms"] / ms if "eager_ms" in state else None,
            "max_abs_diff_vs_eager": _diff(actions, state.get("eager_actions")),
            **utilisation(flops, ms, setting),
        }

    def graph() -> dict[str, Any]:
        sampler = state["sampler"]
        actions, first = timed_s(lambda: sampler(obs, noise), device)
        ms = median_ms(lambda: sampler(obs, noise), device, 1, setting.repeats)
        return {
            "latency_ms": ms,
            "first_call_s": sampler.first_call_s + first,
            "speedup_vs_compiled": state["compiled_ms"] / ms if "compiled_ms" in state else None,
            "speedup_vs_eager": state["eager_ms"] / ms if "eager_ms" in state else None,
            "max_abs_diff_vs_eager": _diff(actions, state.get("eager_actions")),
            **utilisation(flops, ms, setting),
        }

    rec.row(f"{label}/eager", eager)
    rec.row(f"{label}/compiled", compiled)
    no_sampler = None if "sampler" in state else "needs the compiled row's sampler"
    no_cuda = None if setting.cuda else "needs CUDA (CUDA graphs)"
    rec.row(f"{label}/cuda_graph", graph, skip=no_cuda or no_sampler)
    state.clear()


def _diff(a: torch.Tensor, b: torch.Tensor | None) -> float | None:
    return None if b is None else float((a - b).abs().max())


def section_sampling(rec: Recorder, setting: Setting) -> None:
    rec.begin("sampling", BUDGETS_S["sampling"])
    for variant in ("pi0", "pi05"):
        config = setting.policy_config(variant)
        flops = measure_sample_actions_flops(config, num_steps=STEPS, batch_size=1).total
        model = setting.build(config).eval()
        sampling_rows(rec, setting, model, variant, flops)
        del model
        free_memory(setting.device)


def section_pruned(rec: Recorder, setting: Setting) -> None:
    rec.begin("pruned", BUDGETS_S["pruned"])
    model = setting.build(setting.policy_config("pi05")).eval()
    pruner_config = PrunerConfig(keep_ratio=0.1, budget_scope="per_camera", num_cameras=CAMERAS)
    model.set_image_token_filter(ImageTokenPruner(model.config.backbone.width, pruner_config))
    model.eval()  # the pruner too: a fresh module is in training mode (straight-through, K = N)
    sampling_rows(rec, setting, model, "pi05_keep0.1", None)  # FLOPs: the counter cannot prune
    del model
    free_memory(setting.device)


def section_finetune(rec: Recorder, setting: Setting) -> None:
    rec.begin("finetune", BUDGETS_S["finetune"])
    device, batch = setting.device, setting.train_batch
    for checkpointing in (False, True):

        def step_row(checkpointing: bool = checkpointing) -> dict[str, Any]:
            config = setting.policy_config("pi05")
            model = setting.build(config).train()
            if checkpointing:  # applied from outside the model, one unit per joint layer
                apply_activation_checkpointing(model, (JointDecoderLayer,))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
            obs = random_observation(config, batch_size=batch, device=device)
            actions = random_actions(config, batch_size=batch).to(device)

            def step() -> None:
                model(obs, actions).mean().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            step()  # allocates the optimizer state
            resident = reset_peak(device)
            ms = median_ms(step, device, setting.warmup - 1, setting.repeats)
            peak = peak_bytes(device)
            return {
                "batch": batch,
                "step_ms": ms,
                "samples_per_s": batch / (ms * 1e-3),
                "peak_gib": None if peak is None else peak / 2**30,
                "peak_above_resident_gib": None if peak is None else (peak - resident) / 2**30,
            }

        rec.row("pi05/" + ("checkpointing" if checkpointing else "no_checkpointing"), step_row)
        free_memory(device)


def section_imf(rec: Recorder, setting: Setting) -> None:
    rec.begin("imf", BUDGETS_S["imf"])
    device = setting.device
    lowdim = ("observation.state", "observation.environment_state")
    if setting.tiny:
        kinds = {
            "lowdim": (tiny_policy_config(lowdim_keys=lowdim), 8),
            "image": (
                tiny_policy_config(
                    image_keys=("observation.image",), image_shape=(3, 48, 48), crop_shape=(40, 40)
                ),
                8,
            ),
        }
    else:  # vla-imf defaults (n_emb 256, 12 layers) on the PushT tasks' keys and batches
        kinds = {
            "lowdim": (IMFPolicyConfig(lowdim_keys=lowdim), 256),
            "image": (IMFPolicyConfig(image_keys=("observation.image",)), 64),
        }
    for name, (config, batch) in kinds.items():

        def step_row(config: Any = config, batch: int = batch) -> dict[str, Any]:
            torch.manual_seed(0)
            policy = IMFPolicy(config)
            policy.fit_normalizer(pusht_stats(config))
            policy.to(device).train()
            optimizer = policy.configure_optimizers()
            data = {k: v.to(device) for k, v in random_batch(config, batch=batch).items()}

            def step() -> None:
                loss = policy.compute_loss(data)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            ms = median_ms(step, device, setting.warmup, setting.repeats)
            return {"batch": batch, "step_ms": ms, "samples_per_s": batch / (ms * 1e-3)}

        rec.row(f"{config.backbone.kind}_{config.objective}/{name}", step_row)


# Cheap sections before the pruned one (a third compilation), so a slow compiler costs it first.
SECTIONS = {
    "sampling": section_sampling,
    "finetune": section_finetune,
    "imf": section_imf,
    "pruned": section_pruned,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs, seconds, any device")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_gpu_suite.json"))
    parser.add_argument("--markdown", type=Path, default=None, help="default: --out with .md")
    args = parser.parse_args(argv)
    setting = Setting(args)
    wanted = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    meta = {
        "command": "packages/vla-train/benchmarks/gpu_suite.py" + (" --tiny" if args.tiny else ""),
        "tiny": args.tiny,
        "device": setting.device_name,
        "peak_bf16_tflops": setting.peak_tflops if setting.cuda else None,
        "peak_source": "unknown" if setting.peak_tflops is None else "_suite.PEAK_BF16_TFLOPS",
        "dtype": setting.dtype,
        "compile_backend": setting.compile_backend,
        "torch": torch.__version__,
        "setting": {"batch": 1, "cameras": CAMERAS, "prompt": PROMPT, "steps": STEPS},
    }
    rec = Recorder(args.out, meta, TOTAL_BUDGET_S)
    for name in wanted:
        SECTIONS[name](rec, setting)
    report = markdown_report(rec.payload)
    print(report)
    markdown = args.markdown or args.out.with_suffix(".md")
    markdown.write_text(report)
    rec.log(f"wrote {args.out} and {markdown}")


if __name__ == "__main__":
    main()
