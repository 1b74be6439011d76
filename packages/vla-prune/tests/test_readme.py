"""The README's example runs as written (it is the package's front door)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs() -> None:
    text = README.read_text()
    match = re.search(r"## Example\n\n```python\n(.*?)```", text, re.S)
    assert match is not None, "README.md lost its '## Example' python block"
    code = match.group(1)
    assert len(code.strip().splitlines()) <= 14
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)
    kept, mixed = namespace["kept"], namespace["mixed"]
    assert kept.shape[0] == 2 and kept.shape[1] < 768 and kept.shape[1] % 8 == 0  # type: ignore[attr-defined]
    assert mixed.shape == (2, 768, 2048)  # type: ignore[attr-defined]
