"""Output layouts: how planned openpi-PyTorch tensor names and the config are written.

`openpi`: `PI0Pytorch` state-dict names as they are (loadable by openpi / lerobot; the tied
`paligemma.lm_head.weight` and the unused expert `lm_head` are deliberately absent).
`vla`: names passed through vla-core's openpi -> vla rename map, config as vla-core's `PI0Config`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vla_convert.dims import OpenpiDims

CONFIG_FILE = "config.json"


class Layout(Protocol):
    def rename_all(
        self, targets: dict[str, tuple[int, ...]], dims: OpenpiDims
    ) -> dict[str, str]: ...

    def write_config(
        self, dims: OpenpiDims, path: Path, *, dtype: str, action_horizon: int
    ) -> None: ...


def _variant_name(width: int, mlp_dim: int) -> str | None:
    """openpi's variant name for a Gemma of these dims, when it is a shipped one."""
    return {(2048, 16_384): "gemma_2b", (1024, 4096): "gemma_300m", (64, 128): "dummy"}.get(
        (width, mlp_dim)
    )


@dataclass(frozen=True)
class OpenpiLayout:
    def rename_all(self, targets: dict[str, tuple[int, ...]], dims: OpenpiDims) -> dict[str, str]:
        return {name: name for name in targets}

    def write_config(
        self, dims: OpenpiDims, path: Path, *, dtype: str, action_horizon: int
    ) -> None:
        """The fields openpi's own converter writes to config.json."""
        config = {
            "type": "pi05" if dims.pi05 else "pi0",
            "pi05": dims.pi05,
            "action_dim": dims.action_dim,
            "action_horizon": action_horizon,
            "paligemma_variant": _variant_name(dims.paligemma.width, dims.paligemma.mlp_dim),
            "action_expert_variant": _variant_name(dims.expert.width, dims.expert.mlp_dim),
            "precision": dtype,
        }
        path.write_text(json.dumps(config, indent=2) + "\n")


def get_layout(name: str, config_overrides: dict[str, Any] | None = None) -> Layout:
    """`config_overrides`: vla-core `PI0Config` fields for the vla layout (e.g. num_cameras)."""
    if name == "openpi":
        return OpenpiLayout()
    if name == "vla":
        from vla_convert.vla_layout import VlaLayout

        return VlaLayout(dict(config_overrides or {}))
    raise ValueError(f"unknown layout {name!r}; expected 'vla' or 'openpi'")
