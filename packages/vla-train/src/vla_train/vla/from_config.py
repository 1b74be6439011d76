"""The one place where the Hydra `vla:` block becomes the fine-tuning dataclasses.

Unknown keys raise with their names (a misspelt override must not be silently ignored).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from vla_train.vla.data import VLADataConfig
from vla_train.vla.finetune import FinetuneConfig, OptimConfig, finetune
from vla_train.vla.lora import LoRAConfig
from vla_train.vla.policy import PolicyConfig, PruningConfig
from vla_train.vla.synthetic import write_synthetic_dataset

__all__ = ["finetune_config_from_dict", "run_vla_finetune"]

_TUPLES = {"camera_keys", "targets", "betas"}


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown keys in {where}: {unknown}; known: {sorted(known)}")
    values = {k: tuple(v) if k in _TUPLES and v is not None else v for k, v in data.items()}
    return cls(**values)


def finetune_config_from_dict(
    block: dict[str, Any], *, seed: int = 0, device: str = "auto"
) -> FinetuneConfig:
    """`block` is the plain-dict `vla:` config (without `synthetic`)."""
    block = dict(block)
    policy = dict(block.pop("policy"))
    lora = policy.pop("lora", None)
    pruning = policy.pop("pruning", None) or {}
    policy_cfg = _build(PolicyConfig, policy, "vla.policy")
    policy_cfg = dataclasses.replace(
        policy_cfg,
        lora=None if lora is None else _build(LoRAConfig, dict(lora), "vla.policy.lora"),
        pruning=_build(PruningConfig, dict(pruning), "vla.policy.pruning"),
    )
    data = _build(VLADataConfig, dict(block.pop("data")), "vla.data")
    optim = _build(OptimConfig, dict(block.pop("optim", {}) or {}), "vla.optim")
    return _build(
        FinetuneConfig,
        {
            "policy": policy_cfg,
            "data": data,
            "optim": optim,
            "seed": seed,
            "device": device,
            **block,
        },
        "vla",
    )


def run_vla_finetune(
    block: dict[str, Any], run_dir: Path, *, seed: int, device: str, resume: bool
) -> dict[str, Any]:
    """Hydra `mode=vla_finetune`: optionally generate the synthetic dataset (each rank its own
    identical copy, so torchrun ranks never race on one folder), then `finetune`."""
    block = dict(block)
    synthetic = block.pop("synthetic", None)
    data = dict(block["data"])
    if data.get("root") is None:
        if synthetic is None:
            raise ValueError(
                "vla.data.root is required (or set vla.synthetic to generate a dataset)"
            )
        rank = int(os.environ.get("RANK", "0"))
        root = write_synthetic_dataset(run_dir / f"synthetic_data_rank{rank}", **dict(synthetic))
        data["root"] = str(root)
        block["data"] = data
    config = finetune_config_from_dict(block, seed=seed, device=device)
    return finetune(config, run_dir, resume=resume)
