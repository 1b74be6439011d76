"""Output layouts: how planned openpi-PyTorch tensor names and the config are written.

`openpi`: `PI0Pytorch` state-dict names as they are (loadable by openpi / lerobot; the tied
`paligemma.lm_head.weight` and the unused expert `lm_head` are deliberately absent).
`vla`: names passed through vla-core's openpi -> vla rename map, config as vla-core's `PI0Config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from vla_convert.dims import OpenpiDims


class Layout(Protocol):
    config_file: str

    def rename_all(self, targets: dict[str, tuple[int, ...]]) -> dict[str, str]: ...

    def config(self, dims: OpenpiDims, *, dtype: str, action_horizon: int) -> dict[str, Any]: ...


def _variant_name(width: int, mlp_dim: int) -> str | None:
    """openpi's variant name for a Gemma of these dims, when it is a shipped one."""
    return {(2048, 16_384): "gemma_2b", (1024, 4096): "gemma_300m", (64, 128): "dummy"}.get(
        (width, mlp_dim)
    )


@dataclass(frozen=True)
class OpenpiLayout:
    config_file: str = "config.json"

    def rename_all(self, targets: dict[str, tuple[int, ...]]) -> dict[str, str]:
        return {name: name for name in targets}

    def config(self, dims: OpenpiDims, *, dtype: str, action_horizon: int) -> dict[str, Any]:
        """The fields openpi's own converter writes to config.json, plus inferred dims."""
        return {
            "type": "pi05" if dims.pi05 else "pi0",
            "pi05": dims.pi05,
            "action_dim": dims.action_dim,
            "action_horizon": action_horizon,
            "paligemma_variant": _variant_name(dims.paligemma.width, dims.paligemma.mlp_dim),
            "action_expert_variant": _variant_name(dims.expert.width, dims.expert.mlp_dim),
            "precision": dtype,
        }


def get_layout(name: str) -> Layout:
    if name == "openpi":
        return OpenpiLayout()
    if name == "vla":
        from vla_convert.vla_layout import VlaLayout

        return VlaLayout()
    raise ValueError(f"unknown layout {name!r}; expected 'vla' or 'openpi'")
