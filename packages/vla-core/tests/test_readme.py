"""Pins that the README quick-start really runs (pi0.5 build, training loss, sample_actions)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quick_start_runs() -> None:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    assert len(code.group(1).strip().splitlines()) <= 14
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(code.group(1), str(README), "exec"), namespace)
    assert torch.isfinite(namespace["loss"])
    assert namespace["actions"].shape == (2, 5, 6)
    assert namespace["model"].engine.layers[0].expert.input_layernorm.dense is not None
