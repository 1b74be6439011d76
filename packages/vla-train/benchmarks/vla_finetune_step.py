"""One pi0.5 fine-tuning step (forward + backward + AdamW) for {eager, sdpa} x {checkpointing
off, on} x {LightVLA pruning off, on}, side by side in one process; ratios to eager/off/off.

CPU (default): a reduced-width pi0.5 with the real token structure (3 cameras x 256 patches at
224² + 48 prompt tokens = 816 prefix tokens, 50 action tokens, 8/1 heads). Memory on CPU is the
bytes of tensors saved for backward outside checkpointed regions (a saved-tensors hook, storage
de-duplicated): the activation memory that checkpointing and pruning act on. On CUDA the memory
is the true peak (`max_memory_allocated`) of the step above the resident weights + optimizer.
`--full` uses the full-size model (PaliGemma-3B + Gemma-300M) in bf16 (GPU only).

    OMP_NUM_THREADS=2 uv run python packages/vla-train/benchmarks/vla_finetune_step.py
    uv run python packages/vla-train/benchmarks/vla_finetune_step.py --device cuda --full --batch 4
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from vla_core import (
    GemmaConfig,
    JointDecoderLayer,
    JointEngineConfig,
    PI0Config,
    PI0Model,
    SiglipConfig,
    apply_activation_checkpointing,
)
from vla_core._testing import perturb_adarms, random_observation
from vla_prune import ImageTokenPruner, NoiseSchedule, PrunerConfig
from vla_train.atomic import atomic_write_json

BACKBONE = GemmaConfig(
    width=256, depth=4, mlp_dim=1024, num_heads=8, num_kv_heads=1, head_dim=32, vocab_size=1024
)
EXPERT = GemmaConfig(
    width=128, depth=4, mlp_dim=512, num_heads=8, num_kv_heads=1, head_dim=32, vocab_size=1024
)
VISION = SiglipConfig(width=64, depth=2, mlp_dim=128, num_heads=2, patch_size=14, image_size=224)


def model_config(attention: str, full: bool) -> PI0Config:
    if full:
        return PI0Config(
            variant="pi05", attention_implementation=attention, dtype="bfloat16",
            max_token_len=48,
        )  # fmt: skip
    engine = JointEngineConfig(backbone=BACKBONE, expert=EXPERT)
    return PI0Config(
        variant="pi05", engine=engine, vision=VISION, num_cameras=3, max_token_len=48,
        attention_implementation=attention,
    )  # fmt: skip


class SavedBytes:
    """Bytes of distinct storages saved for backward while active."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        self.seen[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


class Case:
    """One configuration: its own model, optimizer and (optional) pruner, stepped on demand."""

    def __init__(self, attention: str, ckpt: bool, prune: bool, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        self.args = args
        self.key = {"attention": attention, "checkpointing": ckpt, "pruning": prune}
        torch.manual_seed(0)
        config = model_config(attention, args.full)
        with self.device:
            self.model = PI0Model(config)
        if ckpt:
            apply_activation_checkpointing(self.model, (JointDecoderLayer,))
        perturb_adarms(self.model)
        self.pruner = None
        if prune:
            self.pruner = ImageTokenPruner(config.backbone.width, PrunerConfig(num_cameras=3))
            self.model.set_image_token_filter(self.pruner)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-5)
        self.obs = random_observation(config, batch_size=args.batch, device=self.device)
        gen = torch.Generator().manual_seed(1)
        shape = (args.batch, config.action_horizon, config.action_dim)
        self.actions = torch.randn(shape, generator=gen).to(self.device)
        self.schedule = NoiseSchedule("linear", max_steps=args.warmup + args.steps)
        self.step_index = 0
        self.times: list[float] = []
        self.saved = 0
        self.peak = 0

    def step(self, timed: bool) -> None:
        cuda = self.device.type == "cuda"
        if self.pruner is not None:
            self.pruner.set_noise_scale(self.schedule(self.step_index))
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated()
        counter = SavedBytes()
        start = time.perf_counter()
        with (
            torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t),
            torch.autocast(self.device.type, torch.bfloat16, enabled=self.args.full),
        ):
            loss = self.model(self.obs, self.actions).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            self.peak = max(self.peak, torch.cuda.max_memory_allocated() - resident)
        if timed:
            self.times.append(time.perf_counter() - start)
        self.saved = counter.total
        self.step_index += 1

    def result(self) -> dict[str, Any]:
        return {
            **self.key,
            "step_s": min(self.times),
            "step_s_median": statistics.median(self.times),
            "saved_activation_bytes": self.saved,
            "cuda_step_peak_bytes": self.peak if self.device.type == "cuda" else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="full-size pi0.5, bf16 (GPU)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="/tmp/vla_finetune_step.json")
    args = parser.parse_args()
    torch.set_float32_matmul_precision("high")
    grid = itertools.product(("eager", "sdpa"), (False, True), (False, True))
    if args.full:  # one full-size model at a time on the GPU: cases run back to back
        rows = []
        for attention, ckpt, prune in grid:
            case = Case(attention, ckpt, prune, args)
            for i in range(args.warmup + args.steps):
                case.step(timed=i >= args.warmup)
            rows.append(case.result())
            del case
            torch.cuda.empty_cache()
    else:  # interleaved rounds, min over rounds: robust to a shared, noisy CPU
        cases = [Case(a, c, p, args) for a, c, p in grid]
        for i in range(args.warmup + args.steps):
            for case in cases:
                case.step(timed=i >= args.warmup)
            print(f"round {i + 1}/{args.warmup + args.steps} done", flush=True)
        rows = [case.result() for case in cases]
    base = rows[0]
    mem_key = "cuda_step_peak_bytes" if args.device.startswith("cuda") else "saved_activation_bytes"
    header = f"{'attention':<9} {'ckpt':<5} {'prune':<5} {'step':>9} {'time x':>7} {'memory':>10} {'mem x':>6}"
    print(f"pi0.5 {'full bf16' if args.full else 'reduced fp32'} on {args.device}, batch {args.batch}; "
          f"memory = {mem_key}")  # fmt: skip
    print(header)
    for row in rows:
        row["time_ratio"] = row["step_s"] / base["step_s"]
        row["memory_ratio"] = row[mem_key] / base[mem_key]
        print(
            f"{row['attention']:<9} {'on' if row['checkpointing'] else 'off':<5} "
            f"{'on' if row['pruning'] else 'off':<5} {row['step_s'] * 1e3:>7.0f}ms "
            f"{row['time_ratio']:>7.2f} {row[mem_key] / 2**20:>8.1f}MB {row['memory_ratio']:>6.2f}"
        )
    meta = {"device": args.device, "full": args.full, "batch": args.batch, "steps": args.steps,
            "torch": torch.__version__}  # fmt: skip
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()
    atomic_write_json(Path(args.out), {"meta": meta, "rows": rows}, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
