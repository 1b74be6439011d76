"""End-to-end conversion of random openpi orbax checkpoints (openpi layout), dims inference,
the streaming safetensors writer and assets. Tensors must equal the in-memory plan bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vla_convert._testing import (
    full_pi0_dims,
    random_openpi_params,
    tiny_dims,
    write_openpi_checkpoint,
)
from vla_convert.checkpoint import OpenpiCheckpoint
from vla_convert.convert import convert_openpi
from vla_convert.dims import expected_leaves, infer_dims
from vla_convert.lora import LoraSpec
from vla_convert.mapping import build_plan, map_params, plan_targets
from vla_convert.writer import StreamingSafetensorsWriter, atomic_output_dir


@pytest.mark.parametrize("pi05", [False, True])
def test_full_size_dims_round_trip_from_shapes_only(pi05: bool) -> None:
    dims = full_pi0_dims(pi05=pi05, lora=True)
    assert infer_dims(expected_leaves(dims)) == dims
    targets = plan_targets(build_plan(dims, (LoraSpec(16, 16.0), LoraSpec(32, 32.0))))
    numel = sum(int(np.prod(s)) for s in targets.values())
    # reference sheet §3: 3,238,048,528 (pi0) / 3,353,433,872 (pi0.5) params without LoRA
    assert numel == (3_353_433_872 if pi05 else 3_238_048_528)
    expert = "paligemma_with_expert.gemma_expert.model.layers.0.self_attn."
    assert targets[expert + "o_proj.weight"] == (1024, 2048)  # N*H = 2048 != D = 1024
    assert targets[expert + "k_proj.weight"] == (256, 1024)
    assert not any("lm_head" in name for name in targets)
    assert "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight" in targets


@pytest.mark.parametrize(
    ("pi05", "lora", "value_suffix", "fused"),
    [
        (False, False, False, False),
        (False, True, True, False),
        (True, False, True, True),
        (True, True, False, False),
    ],
)
def test_convert_matches_in_memory_plan(
    tmp_path: Path, pi05: bool, lora: bool, value_suffix: bool, fused: bool
) -> None:
    dims = tiny_dims(pi05=pi05, lora_rank=4 if lora else None, fused_qkv=fused)
    params = random_openpi_params(dims, seed=3)
    stats = {"state": {"mean": [0.5], "std": [2.0]}}
    step = write_openpi_checkpoint(
        tmp_path / "ckpt" / "1000", params, value_suffix=value_suffix, norm_stats=stats
    )
    ckpt = OpenpiCheckpoint(step)
    assert ckpt.value_suffixed == value_suffix
    assert infer_dims({k: i.shape for k, i in ckpt.leaves.items()}) == dims
    spec = LoraSpec(4, 8.0) if lora else None
    out = tmp_path / "out"
    summary = convert_openpi(step, out, layout="openpi", lora=spec, model="pi05" if pi05 else "pi0")
    expected = map_params(params, build_plan(dims, (spec, spec)))
    written = load_file(out / "model.safetensors")
    assert set(written) == set(expected)
    for name, array in expected.items():
        assert written[name].dtype == torch.float32
        assert torch.equal(written[name], array), name
    assert summary.tensors == len(expected)
    assert summary.bytes == sum(a.numel() * 4 for a in expected.values())
    assert len(summary.lora_modules) == (8 if fused else 10) * lora
    assert json.loads((out / "assets" / "trossen" / "norm_stats.json").read_text()) == {
        "norm_stats": stats
    }
    record = json.loads((out / "conversion.json").read_text())
    assert record["model"] == ("pi05" if pi05 else "pi0")
    attn = {**vars(spec), "scale": 2.0} if lora else None
    ffn = {"rank": 4, "scale": 1.0} if lora else None
    assert record["lora"]["paligemma"] == (None if not lora else {"attn": attn, "ffn": ffn})
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()["source"] == "openpi"
    assert {p.name for p in tmp_path.iterdir()} == {"ckpt", "out"}  # no temp dirs left


def test_default_dtype_bf16_source_without_lora_stays_bf16(tmp_path: Path) -> None:
    import ml_dtypes

    dims = tiny_dims(pi05=False)
    params = random_openpi_params(dims, dtype=ml_dtypes.bfloat16)
    step = write_openpi_checkpoint(tmp_path / "c", params)
    summary = convert_openpi(step, tmp_path / "o", layout="openpi")
    assert summary.dtype == "bfloat16"
    written = load_file(tmp_path / "o" / "model.safetensors")
    expected = map_params(params, build_plan(dims, (None, None)))
    for name, array in expected.items():  # bf16 -> fp32 -> bf16 is exact
        assert torch.equal(written[name].float(), array), name


def test_lora_with_bfloat16_output_warns(tmp_path: Path) -> None:
    dims = tiny_dims(lora_rank=4)
    step = write_openpi_checkpoint(tmp_path / "c", random_openpi_params(dims))
    with pytest.warns(UserWarning, match="bfloat16"):
        summary = convert_openpi(
            step, tmp_path / "o", layout="openpi", lora=LoraSpec(4, 4.0), dtype="bfloat16"
        )
    assert summary.dtype == "bfloat16"


def test_streaming_writer_out_of_order_and_incomplete(tmp_path: Path) -> None:
    shapes = {"a": (2, 3), "b": (5,), "c": (1, 1, 4)}
    w = StreamingSafetensorsWriter(tmp_path / "x.safetensors", shapes, torch.float32, {"k": "v"})
    tensors = {n: torch.randn(s) for n, s in shapes.items()}
    for name in ("c", "a", "b"):
        w.write(name, tensors[name])
    w.close()
    loaded = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(loaded[n], t) for n, t in tensors.items())
    w = StreamingSafetensorsWriter(tmp_path / "y.safetensors", shapes, torch.bfloat16)
    with pytest.raises(ValueError, match="planned"):
        w.write("a", torch.zeros(3, 2))
    w.write("a", torch.zeros(2, 3))
    with pytest.raises(KeyError, match="twice"):
        w.write("a", torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"never written: \['b', 'c'\]"):
        w.close()


def test_atomic_output_dir_leaves_nothing_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("1")
    with pytest.raises(FileExistsError), atomic_output_dir(tmp_path / "out"):
        pass
    with atomic_output_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "g").write_text("2")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["g"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_generator_randomises_openpi_zero_initialised_leaves() -> None:
    params = random_openpi_params(tiny_dims(pi05=True, lora_rank=2), seed=0)
    zero_in_openpi = [
        k for k in params if k.startswith("PaliGemma/img/head/") or "norm_1/Dense_0" in k
    ]
    assert len(zero_in_openpi) == 2 + 6  # head kernel/bias; 3 adaRMS Dense_0 kernel/bias pairs
    for key in zero_in_openpi:
        assert 0.01 < float(np.std(params[key])) < 1.0, key  # random and moderate
    lora_b = params["PaliGemma/llm/layers/attn/attn_vec_einsum/lora_b"]
    assert 0.02 < float(np.std(lora_b)) < 0.1
