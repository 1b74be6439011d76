"""The README's examples really run (they are executed verbatim)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_training_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 2
    torch.manual_seed(0)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    actions = namespace["actions"]
    assert isinstance(actions, torch.Tensor) and actions.shape == (4, 8, 2)
    assert torch.isfinite(actions).all()


def test_readme_config_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespace: dict[str, object] = {}
    exec(compile(blocks[1], str(README), "exec"), namespace)
    assert "from_flat" in blocks[1] and "cfg" in namespace
