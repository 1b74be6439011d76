"""pi0 serving: our and openpi's weight layouts load, requests with openpi's field names are
answered with unnormalised actions, RTC requests are accepted, bad requests name the key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vla_core import PI0Model
from vla_core._testing import tiny_pi0_config
from vla_core.state_dict import export_state_dict, save_config
from vla_serve.errors import RequestError
from vla_serve.normalization import load_norm_stats
from vla_serve.pi0_policy import PI0ServeConfig, PI0ServedPolicy, load_pi0

CAMERAS = ("base", "wrist")


@pytest.fixture(scope="module")
def pi0_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = tiny_pi0_config()
    model = PI0Model(config)
    directory = tmp_path_factory.mktemp("pi0")
    save_config(config, directory / "config.json")
    for layout in ("vla", "openpi"):
        tensors = export_state_dict(model, layout)
        save_file(
            {k: v.clone().contiguous() for k, v in tensors.items()},
            str(directory / f"{layout}.safetensors"),
        )
    stats = {
        name: {"mean": [1.0] * dim, "std": [2.0] * dim, "q01": [-1.0] * dim, "q99": [3.0] * dim}
        for name, dim in (("state", 5), ("actions", 4))
    }
    (directory / "norm_stats.json").write_text(json.dumps({"norm_stats": stats}))
    return directory


def _served(directory: Path, layout: str) -> PI0ServedPolicy:
    model = load_pi0(directory / "config.json", directory / f"{layout}.safetensors", layout=layout)
    stats = load_norm_stats(directory / "norm_stats.json", quantile=False)
    return PI0ServedPolicy(model, stats, CAMERAS, PI0ServeConfig(num_steps=2, seed=0))


def _request() -> dict:
    rng = np.random.default_rng(0)
    size = 56
    return {
        "images": {name: rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for name in CAMERAS},
        "state": rng.normal(size=5).astype(np.float32),
        "tokenized_prompt": np.arange(12, dtype=np.int32),
        "tokenized_prompt_mask": np.arange(12) < 9,
    }


def test_vla_and_openpi_layouts_give_the_same_actions(pi0_files: Path) -> None:
    ours = _served(pi0_files, "vla").infer(_request())["actions"]
    theirs = _served(pi0_files, "openpi").infer(_request())["actions"]
    assert ours.shape == (5, 4)  # action_horizon 5, the 4 dims the statistics cover
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_rtc_request_and_metadata(pi0_files: Path) -> None:
    served = _served(pi0_files, "vla")
    assert served.metadata()["chunk_length"] == 5
    rtc = {
        "previous_action": np.ones((3, 4), np.float32),
        "inference_delay": 1,
        "execution_horizon": 2,
    }
    assert served.infer({**_request(), "rtc": rtc})["actions"].shape == (5, 4)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r["images"].pop("wrist"), "'images.wrist' is missing"),
        (
            lambda r: r["images"].update(base=np.zeros((32, 32, 3), np.uint8)),
            "'images.base' must have shape [56, 56, 3]",
        ),
        (lambda r: r.update(state=np.full(5, np.nan, np.float32)), "'state' holds NaN"),
        (lambda r: r.pop("tokenized_prompt"), "'tokenized_prompt' is missing"),
    ],
)
def test_bad_requests_name_the_key(pi0_files: Path, change, expected: str) -> None:
    request = _request()
    change(request)
    with pytest.raises(RequestError) as info:
        _served(pi0_files, "vla").infer(request)
    assert expected in str(info.value)


def test_warmup_leaves_the_sampler_state_as_it_found_it(pi0_files: Path) -> None:
    warmed = _served(pi0_files, "vla")
    warmed.warmup()
    cold = _served(pi0_files, "vla")
    np.testing.assert_array_equal(
        warmed.infer(_request())["actions"], cold.infer(_request())["actions"]
    )
