"""The README's Python example runs as written (paths moved under tmp_path)."""

from __future__ import annotations

import re
from pathlib import Path


def test_readme_python_example_runs(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Python example\n\n```python\n(.*?)```", readme, re.S)
    assert code is not None
    source = code.group(1).replace("/tmp/demo", str(tmp_path / "demo"))
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)
    assert tuple(namespace["actions"].shape) == (2, 5, 6)
    assert max(namespace["summary"].max_abs_diff.values()) < 1e-4
