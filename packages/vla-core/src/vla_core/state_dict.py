"""Our checkpoint files: `model.safetensors` (vla layout) + `config.json` in one directory, written
atomically. Also the import path of the state-dict API (`vla_core.state_dict.<name>`): the rename
tables live in `vla_core.layouts`, conversion in `vla_core.conversion`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vla_core.config import PI0Config
from vla_core.conversion import (
    ConvertedStateDict,
    StateDictMismatchError,
    convert_state_dict,
    export_state_dict,
    load_state_dict,
    transformers_pi0_config,
)
from vla_core.layouts import LAYOUTS, rename_map, unused_reference_keys
from vla_core.pi0 import PI0Model

__all__ = [
    "CONFIG_FILE",
    "LAYOUTS",
    "WEIGHTS_FILE",
    "ConvertedStateDict",
    "StateDictMismatchError",
    "convert_state_dict",
    "export_state_dict",
    "load_config",
    "load_pretrained",
    "load_state_dict",
    "rename_map",
    "save_config",
    "save_pretrained",
    "transformers_pi0_config",
    "unused_reference_keys",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_NAME = "vla-core/pi0"
FORMAT_VERSION = 1


def save_config(config: PI0Config, path: str | os.PathLike[str]) -> None:
    """Write `config` as JSON (atomically: temp file + rename)."""
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config.to_dict()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load_config(path: str | os.PathLike[str]) -> PI0Config:
    """Read a config written by `save_config` (a directory means its `config.json`)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    payload = json.loads(path.read_text())
    if payload.get("format") != FORMAT_NAME or "config" not in payload:
        raise ValueError(
            f"{path} is not a vla-core config (expected format {FORMAT_NAME!r}, "
            f"got {payload.get('format')!r})"
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported format_version {payload.get('format_version')!r} "
            f"(this vla-core reads {FORMAT_VERSION})"
        )
    return PI0Config.from_dict(payload["config"])


def save_pretrained(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write `model.safetensors` (vla layout) + `config.json` into `directory`, atomically.

    Both files are written into a temporary sibling directory which then replaces `directory`
    (an existing one is moved aside first and removed after the swap), so a reader never sees a
    half-written checkpoint.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, PI0Config):
        raise ValueError("save_pretrained needs a model with a PI0Config `.config`")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in export_state_dict(model).items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "layout": "vla"})
        save_config(config, tmp / CONFIG_FILE)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_pretrained(
    directory: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    image_token_filter: Any = None,
    **config_overrides: Any,
) -> nn.Module:
    """Build a `PI0Model` from `config.json` and load `model.safetensors` strictly.

    `config_overrides` replace config fields first (e.g. `attention_implementation="eager"`).
    `image_token_filter` is attached before loading (needed when the checkpoint holds the state
    of a learned filter module; the JSON config does not describe filters).
    The model is built without running weight initialisers (transformers' `no_init_weights`),
    since the strict load overwrites every parameter; non-persistent buffers are built normally.
    """
    from transformers.initialization import no_init_weights  # lazy: heavy import

    directory = Path(directory)
    config = load_config(directory / CONFIG_FILE)
    if config_overrides:
        config = config.replace(**config_overrides)
    tensors = load_file(str(directory / WEIGHTS_FILE), device=str(device))
    with torch.device(device), no_init_weights():
        model = PI0Model(config, image_token_filter=image_token_filter)
    load_state_dict(model, tensors, "vla", strict=True)
    return model
