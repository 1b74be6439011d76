"""Pins the trainer's small parts against closed forms: warmup+cosine schedule, EMA decay rule
and averaging, epoch sharding across ranks, atomic checkpoint round trips (safetensors and DCP)
incl. RNG state, the atomic writers and the GIF writer."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vla_train.atomic import atomic_dir, atomic_write_text, write_gif
from vla_train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_train_state,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vla_train.distributed import ShardedEpochSampler
from vla_train.ema import EMA
from vla_train.schedule import cosine_with_warmup, set_learning_rate


def test_schedule_warms_up_linearly_then_follows_half_cosine() -> None:
    kw = {"warmup_steps": 10, "max_steps": 110, "min_ratio": 0.1}
    assert cosine_with_warmup(0, **kw) == pytest.approx(0.1)
    assert cosine_with_warmup(9, **kw) == pytest.approx(1.0)
    for step in (10, 35, 60, 85, 110):
        p = (step - 10) / 100
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
        assert cosine_with_warmup(step, **kw) == pytest.approx(expected, abs=1e-12)
    assert cosine_with_warmup(10_000, **kw) == pytest.approx(0.1)  # clamps after max_steps
    with pytest.raises(ValueError, match="min_ratio"):
        cosine_with_warmup(0, warmup_steps=1, max_steps=10, min_ratio=2.0)


def test_schedule_drives_the_optimizer_lr_like_lambda_lr() -> None:
    """`set_learning_rate(base · factor(step))` gives LambdaLR's numbers bit for bit (the PushT
    default's learning rates did not move when the loop stopped using LambdaLR)."""
    kw = {"warmup_steps": 4, "max_steps": 8, "min_ratio": 0.0}
    p, q = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p]}, {"params": [q], "lr": 0.3}], lr=2.0)
    ref = torch.optim.AdamW([{"params": [p]}, {"params": [q], "lr": 0.3}], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: cosine_with_warmup(s, **kw))
    base = [g["lr"] for g in opt.param_groups]
    lrs = []
    for step in range(8):
        lrs.append(set_learning_rate(opt, base, cosine_with_warmup(step, **kw))[0])
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ref.param_groups]
        ref.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs[4] == pytest.approx(2.0) and lrs[-1] < lrs[4]


def test_ema_decay_rule_and_average() -> None:
    model = nn.Linear(3, 2)
    ema = EMA(model, power=0.75, max_decay=0.9999)
    assert ema.decay(1) == 0.0  # first update copies the weights
    assert ema.decay(11) == pytest.approx(1 - 11**-0.75)
    assert ema.decay(10**9) == pytest.approx(0.9999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert torch.equal(ema.model.weight, model.weight)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # decay(2) = 1 - 2^-0.75
    d = 1 - 2**-0.75
    torch.testing.assert_close(ema.model.weight, torch.full((2, 3), d * 1.0 + (1 - d) * 3.0))
    assert not ema.model.weight.requires_grad
    with pytest.raises(ValueError, match="max_decay"):
        EMA(model, max_decay=1.0)


def test_sharded_sampler_partitions_each_epoch_and_resumes_mid_epoch() -> None:
    n, bs = 103, 8
    shards = [ShardedEpochSampler(n, bs, rank=r, world_size=2, seed=3) for r in range(2)]
    assert len(shards[0]) == (n // 2) // bs
    seen = [i for s in shards for b in s.batches(epoch=0) for i in b]
    assert len(seen) == len(set(seen)) == 2 * len(shards[0]) * bs  # disjoint, no repeats
    again = [i for b in shards[0].batches(epoch=0) for i in b]
    assert again == [i for b in shards[0].batches(epoch=0) for i in b]  # deterministic
    assert list(shards[0].batches(epoch=1)) != list(shards[0].batches(epoch=0))
    full = list(shards[1].batches(epoch=4))
    assert list(shards[1].batches(epoch=4, start=2)) == full[2:]
    tiny = ShardedEpochSampler(5, 64, rank=0, world_size=1, seed=0)
    assert len(tiny) == 1 and len(next(tiny.batches(0))) == 5
    with pytest.raises(ValueError, match="fewer than"):
        ShardedEpochSampler(1, 4, rank=0, world_size=2, seed=0)


def test_rng_state_round_trip_restores_every_generator() -> None:
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


@pytest.mark.parametrize("sharded", [False, True])
def test_checkpoint_round_trip_is_exact_and_latest_is_atomic(tmp_path: Path, sharded: bool) -> None:
    torch.manual_seed(0)
    model, ema_model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), nn.Linear(4, 4)
    model.register_buffer("stat", torch.arange(4.0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    for step in (10, 20, 30):
        path = save_checkpoint(
            tmp_path,
            step,
            model=model,
            optimizer=opt,
            ema_model=ema_model,
            config={"a": 1},
            train_state={"recipe": {"epoch": 1, "batch": 2}},
            keep_last=2,
            sharded=sharded,
        )
    assert latest_checkpoint(tmp_path) == path
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest",
        "step_0000020",
        "step_0000030",
    ]  # no temp dirs left, pruned to keep_last
    state = load_train_state(path)  # weights_only=True
    assert state["step"] == 30 and state["recipe"] == {"epoch": 1, "batch": 2}
    assert (path / "model.safetensors").is_file() != sharded
    clone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    clone.register_buffer("stat", torch.zeros(4))
    ema_clone = nn.Linear(4, 4)
    opt2 = torch.optim.AdamW(clone.parameters(), lr=1e-3)
    if sharded:  # DCP restores optimizer state into existing state entries
        clone(torch.randn(2, 4)).sum().backward()
        opt2.step()
    load_checkpoint(path, model=clone, optimizer=opt2, ema_model=ema_clone)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), clone.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(ema_clone.weight, ema_model.weight)
    torch.testing.assert_close(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    if not sharded:
        with pytest.raises(KeyError, match="missing keys"):
            load_weights(nn.Linear(4, 4), path / "model.safetensors")


def test_atomic_writers_leave_nothing_half_written(tmp_path: Path) -> None:
    target = tmp_path / "a" / "file.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == [
        "file.txt"
    ]
    folder = tmp_path / "dir"
    with pytest.raises(RuntimeError), atomic_dir(folder) as tmp:
        (tmp / "x").write_text("partial")
        raise RuntimeError("crash")
    assert not folder.exists() and list(tmp_path.iterdir()) == [tmp_path / "a"]
    with atomic_dir(folder) as tmp:
        (tmp / "x").write_text("done")
    assert (folder / "x").read_text() == "done"
    frames = [np.full((8, 8, 3), v, np.uint8) for v in (0, 128, 255)]
    write_gif(frames, tmp_path / "g.gif", size=4)
    from PIL import Image

    with Image.open(tmp_path / "g.gif") as im:
        assert im.size == (4, 4) and im.n_frames == 3
    with pytest.raises(ValueError, match="no frames"):
        write_gif([], tmp_path / "empty.gif")


def test_loggers_tensorboard_default_optional_extras_named(tmp_path: Path) -> None:
    import importlib.util

    from vla_train.loggers import build_logger

    kw = {"run_dir": tmp_path, "project": "p", "run_name": "r", "mode": "offline", "config": {}}
    tb = build_logger("tensorboard", **kw)
    tb.log({"train/loss": 1.0}, step=1)
    tb.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    for extra in ("wandb", "swanlab"):
        if importlib.util.find_spec(extra) is None:
            with pytest.raises(ImportError, match=rf"vla-train\[{extra}\]"):
                build_logger(extra, **kw)
    with pytest.raises(ValueError, match=r"logger\.backend"):
        build_logger("mlflow", **kw)


@pytest.mark.parametrize("policy", ["imf_attnres_full", "imf_vanilla"])
def test_pusht_activation_checkpointing_is_applied_by_parallelize(policy: str) -> None:
    """`parallel.activation_checkpointing=true` wraps the backbone kind's layers from outside
    (the recipe's `blocks`); the loss and gradients equal the plain model's; the checkpoint's
    config.json carries no training knob."""
    from vla_core import has_activation_checkpointing
    from vla_imf import CHECKPOINT_LAYER_TYPES, IMFPolicy
    from vla_imf._testing import pusht_stats, random_batch
    from vla_train._testing import load_config
    from vla_train.distributed import DistInfo
    from vla_train.parallel import parallelize
    from vla_train.recipes.pusht_imf import PushTIMF

    overrides = [f"policy={policy}", "policy.n_emb=32", "policy.n_layer=2", "policy.p_drop_attn=0"]
    config = load_config([*overrides, "parallel.activation_checkpointing=true"])
    assert config.pusht is not None and config.parallel.activation_checkpointing
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    recipe = PushTIMF(config, Path("unused"), info)
    kind = config.pusht.policy.backbone.kind
    assert recipe.blocks == CHECKPOINT_LAYER_TYPES[kind]
    assert "gradient_checkpointing" not in str(recipe.checkpoint_config()["policy"])
    torch.manual_seed(0)
    plain = IMFPolicy(config.pusht.policy)
    plain.fit_normalizer(pusht_stats(plain.config))
    ckpt = IMFPolicy(config.pusht.policy)
    ckpt.load_state_dict(plain.state_dict())
    module = parallelize(
        ckpt,
        config.parallel,
        blocks=recipe.blocks,
        loss_module=recipe.loss_module,
        device=info.device,
        world_size=1,
    )
    assert has_activation_checkpointing(ckpt.backbone)
    assert not has_activation_checkpointing(plain.backbone)
    batch = random_batch(plain.config, batch=3, generator=torch.Generator().manual_seed(1))
    results = []
    for forward, model in ((recipe.loss_module(plain), plain), (module, ckpt)):
        torch.manual_seed(4)
        loss = forward(batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((loss.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)
