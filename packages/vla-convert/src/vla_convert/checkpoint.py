"""Read an openpi orbax checkpoint leaf by leaf with orbax-checkpoint's current API.

openpi saves `<step>/params` as a PyTree checkpoint holding `{"params": pure_dict}`; leaves may end in
an extra `value` key (nnx.State). openpi's `restore_params` indexes `StepMetadata` like a dict and
breaks on orbax >= 0.12; here the tree comes from `metadata(path).item_metadata` and each leaf is
restored alone (`partial_restore=True`), so memory is bounded by the largest leaf.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_convert.errors import CheckpointReadError

_VALUE_SUFFIX = "value"
_ORBAX_FILES = ("_METADATA", "_CHECKPOINT_METADATA")


@dataclass(frozen=True)
class LeafInfo:
    """One array in the checkpoint: its `/`-joined openpi key, orbax key path, shape and dtype."""

    key: str  # e.g. "PaliGemma/llm/layers/attn/q_einsum/w"
    path: tuple[str, ...]  # full orbax key path, e.g. ("params", "PaliGemma", ..., "w", "value")
    shape: tuple[int, ...]
    dtype: np.dtype


def find_params_dir(checkpoint_dir: str | Path) -> Path:
    """Accept `<step>/`, `<step>/params/` or a bare PyTree dir; return the orbax params dir."""
    root = Path(checkpoint_dir)
    if not root.exists():
        raise CheckpointReadError(f"checkpoint directory {root} does not exist")
    for candidate in (root / "params", root):
        if (candidate / "_METADATA").is_file():
            return candidate
    raise CheckpointReadError(
        f"{root} is not an orbax PyTree checkpoint: neither {root / 'params' / '_METADATA'} nor "
        f"{root / '_METADATA'} exists (truncated or incomplete copy?)"
    )


def _walk(tree: Any, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, dict):
        for name, child in tree.items():
            yield from _walk(child, (*prefix, str(name)))
    else:
        yield prefix, tree


def _nest(path: tuple[str, ...], leaf: Any) -> dict[str, Any]:
    tree: Any = leaf
    for name in reversed(path):
        tree = {name: tree}
    return tree


class OpenpiCheckpoint:
    """Lazy view of an openpi checkpoint: `leaves` from metadata only, `read(key)` one array."""

    def __init__(self, checkpoint_dir: str | Path) -> None:
        import orbax.checkpoint as ocp

        self.params_dir = find_params_dir(checkpoint_dir).resolve()
        self.step_dir = (
            self.params_dir.parent if self.params_dir.name == "params" else self.params_dir
        )
        self._ocp = ocp
        self._checkpointer = ocp.PyTreeCheckpointer()
        try:
            self._read_tree()
        except BaseException:
            # The constructor's caller never gets an object to close: stop orbax's background
            # machinery here, or its asyncio callbacks fire after the loop is gone.
            self.close()
            raise

    def _read_tree(self) -> None:
        """Fill `leaves` from the checkpoint's metadata (no array is read)."""
        try:
            item = self._checkpointer.metadata(self.params_dir).item_metadata
        except Exception as exc:  # orbax raises many kinds; the path is what the user needs
            raise CheckpointReadError(
                f"cannot read orbax metadata of {self.params_dir}: {type(exc).__name__}: {exc}"
            ) from exc
        if item is None or getattr(item, "tree", None) is None:
            raise CheckpointReadError(
                f"orbax finds no item metadata in {self.params_dir} (truncated checkpoint: "
                "array data or manifest missing?)"
            )
        tree = item.tree
        self.leaves: dict[str, LeafInfo] = {}
        for path, meta in _walk(tree, ()):
            key_path = path[1:] if path and path[0] == "params" else path
            if key_path and key_path[-1] == _VALUE_SUFFIX:
                key_path = key_path[:-1]
            key = "/".join(key_path)
            shape = getattr(meta, "shape", None)
            dtype = getattr(meta, "dtype", None)
            if shape is None or dtype is None:
                raise CheckpointReadError(
                    f"leaf {'/'.join(path)} in {self.params_dir} is not an array ({meta!r})"
                )
            if key in self.leaves:
                raise CheckpointReadError(
                    f"leaf {key} appears twice (with and without a '/value' suffix)"
                )
            self.leaves[key] = LeafInfo(key, path, tuple(int(d) for d in shape), np.dtype(dtype))

    def close(self) -> None:
        """Stop orbax's background machinery now, not at interpreter exit (where its asyncio
        handlers can print "Event loop is closed" tracebacks after an error)."""
        close = getattr(self._checkpointer, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> OpenpiCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def value_suffixed(self) -> bool:
        """Whether the leaves carry nnx.State's trailing `value` key."""
        return any(info.path[-1] == _VALUE_SUFFIX for info in self.leaves.values())

    def read(self, key: str) -> np.ndarray:
        """Restore one leaf as a host numpy array in its stored dtype."""
        info = self.leaves[key]
        ocp = self._ocp
        item = _nest(info.path, 0)
        restore_args = _nest(info.path, ocp.RestoreArgs(restore_type=np.ndarray))
        try:
            restored = self._checkpointer.restore(
                self.params_dir,
                args=ocp.args.PyTreeRestore(
                    item=item, restore_args=restore_args, partial_restore=True
                ),
            )
        except Exception as exc:
            raise CheckpointReadError(
                f"cannot read leaf {key} from {self.params_dir} (truncated checkpoint?): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        array: Any = restored
        for name in info.path:
            array = array[name]
        array = np.asarray(array)
        if array.shape != info.shape:
            raise CheckpointReadError(
                f"leaf {key}: metadata says shape {info.shape} but the stored array is {array.shape}"
            )
        return array

    def norm_stats_files(self) -> list[Path]:
        """`<step>/assets/<asset_id>/norm_stats.json` files (openpi's normalisation statistics)."""
        assets = self.step_dir / "assets"
        return sorted(assets.glob("*/norm_stats.json")) if assets.is_dir() else []


def copy_norm_stats(files: list[Path], out_dir: Path) -> list[str]:
    """Copy each asset's norm_stats.json to `out_dir/assets/<asset_id>/`; check it is JSON."""
    copied = []
    for src in files:
        asset_id = src.parent.name
        try:
            json.loads(src.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointReadError(f"{src} is not valid JSON: {exc}") from exc
        dst = out_dir / "assets" / asset_id / "norm_stats.json"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        copied.append(f"assets/{asset_id}/norm_stats.json")
    return copied
