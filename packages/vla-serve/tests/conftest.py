"""A tiny vla-imf checkpoint on disk (the layout vla-train writes) and a server on a free port."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

from vla_imf import IMFPolicy
from vla_imf._testing import pusht_stats, tiny_policy_config
from vla_serve.imf_policy import IMFServeConfig, IMFServedPolicy, load_imf_policy
from vla_serve.server import PolicyServer, ServerConfig


@pytest.fixture(scope="session")
def imf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = tiny_policy_config(
        objective="flow_matching",
        num_inference_steps=3,
        lowdim_keys=("observation.state", "observation.environment_state"),
    )
    policy = IMFPolicy(config)
    policy.fit_normalizer(pusht_stats(config))
    run = tmp_path_factory.mktemp("run")
    directory = run / "checkpoints" / "step_0000010"
    directory.mkdir(parents=True)
    save_model(policy, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"policy": asdict(config)}))
    (run / "checkpoints" / "latest").write_text("step_0000010")
    return run


@pytest.fixture
def served(imf_checkpoint: Path) -> IMFServedPolicy:
    return IMFServedPolicy(load_imf_policy(imf_checkpoint), IMFServeConfig(seed=0))


@pytest.fixture
def server(served: IMFServedPolicy) -> Iterator[PolicyServer]:
    instance = PolicyServer(served, ServerConfig(port=0))
    instance.start(timeout_s=30)
    yield instance
    instance.stop(timeout_s=30)
