"""The server against the unmodified PyPI openpi-client over loopback: metadata on connect,
infer -> actions + server_timing, /healthz, reconnect, concurrent clients, and bad requests that
are answered with an error naming the key while the server keeps serving."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosedOK
from websockets.frames import CloseCode
from websockets.sync.client import connect

from vla_serve.imf_policy import IMFServeConfig, IMFServedPolicy, load_imf_policy
from vla_serve.server import PolicyServer, ServerConfig
from vla_serve.wire import packb, unpackb


def _observation(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "observation.state": rng.uniform(0, 512, (2, 2)).astype(np.float32),
        "observation.environment_state": rng.uniform(0, 512, (2, 16)).astype(np.float32),
    }


def _client(server: PolicyServer) -> WebsocketClientPolicy:
    return WebsocketClientPolicy(host="127.0.0.1", port=server.port)


def test_metadata_and_infer_with_openpi_client(server: PolicyServer) -> None:
    client = _client(server)
    metadata = client.get_server_metadata()
    assert metadata["policy"] == "vla-imf"
    assert metadata["observation_shapes"]["observation.environment_state"] == [2, 16]
    assert metadata["chunk_length"] == 7  # horizon 8 - n_obs_steps 2 + 1
    reply = client.infer(_observation())
    assert reply["actions"].shape == (4, 2) and reply["actions"].dtype == np.float32
    assert reply["action_chunk"].shape == (7, 2)
    np.testing.assert_array_equal(reply["actions"], reply["action_chunk"][:4])
    assert reply["server_timing"]["infer_ms"] > 0
    assert "prev_total_ms" not in reply["server_timing"]
    again = client.infer(_observation(1))
    assert again["server_timing"]["prev_total_ms"] >= reply["server_timing"]["infer_ms"]


def test_batched_request(server: PolicyServer) -> None:
    observation = {k: np.stack([v, v, v]) for k, v in _observation().items()}
    assert _client(server).infer(observation)["actions"].shape == (3, 4, 2)


def test_healthz_on_the_same_port(server: PolicyServer) -> None:
    url = f"http://127.0.0.1:{server.port}/healthz"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.read() == b"OK\n"


def test_reconnect_after_server_restart(imf_checkpoint: Path) -> None:
    policy = IMFServedPolicy(load_imf_policy(imf_checkpoint), IMFServeConfig())
    first = PolicyServer(policy, ServerConfig(port=0))
    port = first.start()
    client = WebsocketClientPolicy(host="127.0.0.1", port=port)
    client.infer(_observation())
    first.stop()
    # Graceful shutdown: the server closed the link with a normal "going away" close.
    with pytest.raises(ConnectionClosedOK) as info:
        client.infer(_observation())
    assert info.value.rcvd is not None and info.value.rcvd.code == CloseCode.GOING_AWAY
    second = PolicyServer(policy, ServerConfig(port=port))
    second.start()
    try:
        fresh = WebsocketClientPolicy(host="127.0.0.1", port=port)
        assert fresh.infer(_observation())["actions"].shape == (4, 2)
    finally:
        second.stop()


def test_concurrent_clients(server: PolicyServer) -> None:
    results: dict[int, list[tuple[int, ...]]] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            client = _client(server)
            results[index] = [client.infer(_observation(i))["actions"].shape for i in range(3)]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert results == {i: [(4, 2)] * 3 for i in range(4)}


BAD_REQUESTS = {
    "missing key": (
        {"observation.state": _observation()["observation.state"]},
        "'observation.environment_state' is missing",
    ),
    "wrong shape": (
        {**_observation(), "observation.environment_state": np.zeros((2, 15), np.float32)},
        "'observation.environment_state' must have shape [2, 16]",
    ),
    "NaN state": (
        {**_observation(), "observation.state": np.full((2, 2), np.nan, np.float32)},
        "'observation.state' holds NaN",
    ),
    "bad rtc": (
        {**_observation(), "rtc": {"previous_action": np.zeros((7, 2), np.float32)}},
        "'rtc.inference_delay' is missing",
    ),
    "rtc delay too long": (
        {
            **_observation(),
            "rtc": {
                "previous_action": np.zeros((7, 2), np.float32),
                "inference_delay": 9,
                "execution_horizon": 0,
            },
        },
        "'rtc.inference_delay' must be in [0, 7], got 9",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_answered_and_server_keeps_serving(server: PolicyServer, case: str) -> None:
    request, expected = BAD_REQUESTS[case]
    client = _client(server)
    with pytest.raises(RuntimeError, match="Error in inference server") as info:
        client.infer(request)
    assert expected in str(info.value)
    # The same connection and a new client are both still served.
    assert client.infer(_observation())["actions"].shape == (4, 2)
    assert _client(server).infer(_observation())["actions"].shape == (4, 2)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b"\xc1\xc1", "not valid msgpack"),
        ("a text frame", "expected a binary msgpack frame"),
        (packb([1, 2, 3]), "a request must be a map"),
    ],
)
def test_malformed_frames(server: PolicyServer, frame: bytes | str, expected: str) -> None:
    with connect(f"ws://127.0.0.1:{server.port}", open_timeout=10, close_timeout=5) as ws:
        unpackb(ws.recv(timeout=10))  # metadata
        ws.send(frame)
        reply = ws.recv(timeout=60)
        assert isinstance(reply, str) and expected in reply
        ws.send(packb(_observation()))
        reply = ws.recv(timeout=60)
        assert isinstance(reply, bytes)
        assert unpackb(reply)["actions"].shape == (4, 2)


def test_rtc_request_pulls_the_frozen_actions(served: IMFServedPolicy) -> None:
    """In-process: an "rtc" entry makes the first `inference_delay` actions follow the target."""
    target = np.full((7, 2), 100.0, np.float32)
    plain = served.infer(_observation())["action_chunk"]
    rtc = {"previous_action": target, "inference_delay": 2, "execution_horizon": 3}
    guided = served.infer({**_observation(), "rtc": rtc})["action_chunk"]
    assert np.abs(guided[:2] - 100).mean() < 0.5 * np.abs(plain[:2] - 100).mean()


def test_warmup_leaves_the_sampler_state_as_it_found_it(imf_checkpoint: Path) -> None:
    warmed = IMFServedPolicy(load_imf_policy(imf_checkpoint), IMFServeConfig(seed=3))
    warmed.warmup()
    cold = IMFServedPolicy(load_imf_policy(imf_checkpoint), IMFServeConfig(seed=3))
    np.testing.assert_array_equal(
        warmed.infer(_observation())["actions"], cold.infer(_observation())["actions"]
    )


def test_block_frame_runs_are_refused_by_name(imf_checkpoint: Path, tmp_path: Path) -> None:
    """A vla-train run trained with task.frame=block sees the T's frame: serving it raw with
    world observations would drive the robot with wrong targets, so loading refuses it."""
    import json
    import shutil

    run = tmp_path / "block_run"
    shutil.copytree(imf_checkpoint, run)
    config = run / "checkpoints" / "step_0000010" / "config.json"
    payload = json.loads(config.read_text())
    payload["hydra"] = {"task": {"frame": "block"}}
    config.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"task\.frame='block'"):
        load_imf_policy(run)


def test_old_flat_config_json_run_still_loads(imf_checkpoint: Path, tmp_path: Path) -> None:
    """A run written by vla-train with vla-imf 0.1 has a flat `policy` entry (backbone kind as a
    string, every backbone field beside the policy's, `gradient_checkpointing`): it loads, with
    DeprecationWarnings, into the same config and the same actions."""
    import json
    import shutil

    run = tmp_path / "old_run"
    shutil.copytree(imf_checkpoint, run)
    path = run / "checkpoints" / "step_0000010" / "config.json"
    payload = json.loads(path.read_text())
    policy = dict(payload["policy"])
    backbone = policy.pop("backbone")
    assert isinstance(backbone, dict) and backbone["kind"] == "attnres_full"
    for key in ("input_dim", "output_dim", "cond_dim", "eps"):  # not fields of 0.1's config
        del backbone[key]
    del backbone["horizon"], backbone["n_obs_steps"]  # policy fields in the flat form
    kind = backbone.pop("kind")
    old = {**policy, **backbone, "backbone": kind}
    old.update(causal_attn=False, n_cond_layers=0, gradient_checkpointing=False)
    path.write_text(json.dumps({**payload, "policy": old}))
    with pytest.warns(DeprecationWarning) as record:
        loaded = load_imf_policy(run)
    messages = " | ".join(str(w.message) for w in record)
    assert "gradient_checkpointing is ignored" in messages and "flat IMFPolicyConfig" in messages
    fresh = load_imf_policy(imf_checkpoint)
    assert loaded.config == fresh.config
    obs = _observation()
    batch = {k: torch.as_tensor(v)[None].float() for k, v in obs.items()}
    generator = torch.Generator().manual_seed(0)
    expected = fresh.predict_action(batch, generator=generator)["action"]
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(loaded.predict_action(batch, generator=generator)["action"], expected)
