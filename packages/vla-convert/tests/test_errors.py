"""Bad inputs: each raises a named error that names the key / shape, and leaves no output behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vla_convert._testing import random_openpi_params, tiny_dims, write_openpi_checkpoint
from vla_convert.convert import convert_openpi
from vla_convert.errors import (
    CheckpointReadError,
    LeafShapeError,
    LoraConfigError,
    MissingLeafError,
    ModelMismatchError,
    NonFiniteError,
    UnknownLeafError,
)
from vla_convert.lora import LoraSpec

Q = "PaliGemma/llm/layers/attn/q_einsum/w"
LINEAR_1 = "PaliGemma/llm/layers/mlp_1/linear"


def _convert_fails(step: Path, out: Path, error: type, match: str, **kwargs) -> None:
    with pytest.raises(error, match=match):
        convert_openpi(step, out, layout="openpi", **kwargs)
    assert not out.exists()
    assert not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir())


def _params(pi05: bool = False, lora: int | None = None) -> dict[str, np.ndarray]:
    return random_openpi_params(tiny_dims(pi05=pi05, lora_rank=lora), seed=5)


def test_missing_leaf(tmp_path: Path) -> None:
    params = _params()
    del params[LINEAR_1]
    step = write_openpi_checkpoint(tmp_path / "c", params)
    _convert_fails(step, tmp_path / "o", MissingLeafError, LINEAR_1)


def test_missing_required_leaf_elsewhere(tmp_path: Path) -> None:
    params = _params(pi05=True)
    del params["PaliGemma/llm/layers/pre_ffw_norm_1/Dense_0/bias"]
    step = write_openpi_checkpoint(tmp_path / "c", params)
    _convert_fails(step, tmp_path / "o", MissingLeafError, r"pre_ffw_norm_1/Dense_0/bias \(2, 96\)")


def test_extra_unknown_leaf(tmp_path: Path) -> None:
    params = _params()
    params["PaliGemma/llm/layers/attn/q_einsum/lora_c"] = np.zeros((2, 3), np.float32)
    step = write_openpi_checkpoint(tmp_path / "c", params)
    _convert_fails(step, tmp_path / "o", UnknownLeafError, r"q_einsum/lora_c \(2, 3\)")


def test_half_of_a_lora_pair_is_unknown_or_missing(tmp_path: Path) -> None:
    params = _params(lora=4)
    del params["PaliGemma/llm/layers/attn/attn_vec_einsum_1/lora_b"]
    step = write_openpi_checkpoint(tmp_path / "c", params)
    _convert_fails(
        step, tmp_path / "o", MissingLeafError, "attn_vec_einsum_1/lora_b", lora=LoraSpec(4, 4.0)
    )


def test_wrong_shape(tmp_path: Path) -> None:
    params = _params()
    params[LINEAR_1] = np.zeros((2, 64, 31), np.float32)
    step = write_openpi_checkpoint(tmp_path / "c", params)
    _convert_fails(
        step,
        tmp_path / "o",
        LeafShapeError,
        rf"{LINEAR_1} has \(2, 64, 31\), expected \(2, 64, 32\)",
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_rejected_unless_allowed(tmp_path: Path, bad: float) -> None:
    params = _params()
    params[Q][1, 2, 3, 4] = bad
    step = write_openpi_checkpoint(tmp_path / "c", params)
    _convert_fails(step, tmp_path / "o", NonFiniteError, rf"{Q} \(2, 4, 48, 16\) holds 1 NaN/Inf")
    convert_openpi(step, tmp_path / "o", layout="openpi", allow_nonfinite=True)
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_truncated_checkpoint_metadata(tmp_path: Path) -> None:
    step = write_openpi_checkpoint(tmp_path / "c", _params())
    (step / "params" / "_METADATA").unlink()
    _convert_fails(step, tmp_path / "o", CheckpointReadError, "_METADATA")


def test_truncated_checkpoint_data_fails_mid_stream(tmp_path: Path) -> None:
    step = write_openpi_checkpoint(tmp_path / "c", _params())
    data = [p for p in (step / "params").rglob("*") if p.is_file() and "d" in p.parent.name]
    biggest = max(data, key=lambda p: p.stat().st_size)  # the array data, not the metadata
    with biggest.open("r+b") as f:
        f.truncate(biggest.stat().st_size // 2)
    _convert_fails(
        step, tmp_path / "o", CheckpointReadError, "(?s)cannot read leaf .*truncated checkpoint"
    )


def test_truncated_checkpoint_without_array_data(tmp_path: Path) -> None:
    step = write_openpi_checkpoint(tmp_path / "c", _params())
    shutil.rmtree(step / "params" / "d")
    shutil.rmtree(step / "params" / "ocdbt.process_0")
    _convert_fails(step, tmp_path / "o", CheckpointReadError, "metadata")


def test_missing_checkpoint_dir(tmp_path: Path) -> None:
    _convert_fails(tmp_path / "nope", tmp_path / "o", CheckpointReadError, "does not exist")


def test_lora_present_but_config_unknown(tmp_path: Path) -> None:
    step = write_openpi_checkpoint(tmp_path / "c", _params(lora=4))
    _convert_fails(step, tmp_path / "o", LoraConfigError, "rank 4.*not stored")
    _convert_fails(
        step, tmp_path / "o", LoraConfigError, r"rank 8 .* rank 4", lora=LoraSpec(8, 8.0)
    )


def test_asserted_model_type_must_match(tmp_path: Path) -> None:
    step = write_openpi_checkpoint(tmp_path / "pi05_but_really_pi0", _params(pi05=False))
    _convert_fails(
        step,
        tmp_path / "o",
        ModelMismatchError,
        "asked for pi05 but the checkpoint is pi0",
        model="pi05",
    )


def test_existing_output_is_not_clobbered(tmp_path: Path) -> None:
    step = write_openpi_checkpoint(tmp_path / "c", _params())
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep").write_text("x")
    with pytest.raises(FileExistsError):
        convert_openpi(step, tmp_path / "o", layout="openpi")
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["keep"]


def test_count_nonfinite_bit_test_matches_isfinite() -> None:
    import ml_dtypes

    from vla_convert.convert import count_nonfinite

    rng = np.random.default_rng(0)
    for dtype in (np.float32, ml_dtypes.bfloat16, np.float16):
        array = (rng.standard_normal((7, 5, 3)) * 1e3).astype(dtype)
        array[0, 1, 2], array[3, 0, 0], array[6, 4, 1] = np.nan, np.inf, -np.inf
        assert count_nonfinite(array) == 3
        assert count_nonfinite(np.abs(array[1:3])) == 0
