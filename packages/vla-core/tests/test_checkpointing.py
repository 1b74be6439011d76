"""Pins per-layer activation checkpointing: bit-identical loss and gradients with it on or off, and
exactly one recompute (2 layer-body calls per layer per engine call with it, 1 without)."""

import copy

import pytest
import torch
from torch import nn

from vla_core import (
    JointDecoderLayer,
    PI0Model,
    apply_activation_checkpointing,
    is_activation_checkpointed,
    remove_activation_checkpointing,
)
from vla_core._testing import perturb_adarms, random_actions, random_observation, tiny_pi0_config


@pytest.fixture
def layer_calls(monkeypatch):
    """Counts JointDecoderLayer body executions (forward and recompute)."""
    counter = {"calls": 0}
    body = JointDecoderLayer.forward

    def counting_forward(self, *args, **kwargs):
        counter["calls"] += 1
        return body(self, *args, **kwargs)

    monkeypatch.setattr(JointDecoderLayer, "forward", counting_forward)
    return counter


def _train_step(variant, checkpointing, layer_calls):
    torch.manual_seed(0)
    config = tiny_pi0_config(variant, attention_implementation="sdpa")
    model = PI0Model(config)
    if checkpointing:  # applied from outside, after construction
        assert apply_activation_checkpointing(model, (JointDecoderLayer,)) == len(
            model.engine.layers
        )
    if variant == "pi05":
        perturb_adarms(model, std=0.1)
    model.train()
    obs, actions = random_observation(config), random_actions(config)
    noise = torch.randn_like(actions)
    layer_calls["calls"] = 0
    loss = model(obs, actions, noise=noise, time=torch.tensor([0.3, 0.7])).mean()
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return loss, grads, layer_calls["calls"], config.engine.backbone.depth


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_checkpointing_is_bit_identical_and_recomputes_once(variant, layer_calls) -> None:
    loss_off, grads_off, calls_off, depth = _train_step(variant, False, layer_calls)
    loss_on, grads_on, calls_on, _ = _train_step(variant, True, layer_calls)
    # pi0 trains with one joint engine call; pi0.5 with a prefix call + a suffix call.
    engine_calls = 1 if variant == "pi0" else 2
    assert calls_off == depth * engine_calls
    assert calls_on == 2 * depth * engine_calls
    assert torch.equal(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys()
    with_grad = 0
    for name, grad in grads_off.items():
        if grad is None:
            assert grads_on[name] is None, name
            continue
        with_grad += 1
        assert torch.equal(grads_on[name], grad), name
    assert with_grad > 0.9 * len(grads_off)


def _checkpointed(model: PI0Model) -> PI0Model:
    apply_activation_checkpointing(model, (JointDecoderLayer,))
    return model


def _loss_calls(model, config, layer_calls, *, backward: bool) -> int:
    obs, actions = random_observation(config), random_actions(config)
    layer_calls["calls"] = 0
    loss = model(obs, actions, noise=torch.randn_like(actions), time=torch.tensor([0.3, 0.7]))
    if backward:
        loss.mean().backward()
    return layer_calls["calls"]


def test_checkpointing_is_off_without_grad_in_training_mode(layer_calls) -> None:
    config = tiny_pi0_config("pi0")
    model = _checkpointed(PI0Model(config)).train()
    with torch.no_grad():
        calls = _loss_calls(model, config, layer_calls, backward=False)
    assert calls == config.engine.backbone.depth  # one joint engine call, nothing recomputed


def test_checkpointing_is_off_in_eval_mode_with_grad(layer_calls) -> None:
    config = tiny_pi0_config("pi0")
    model = _checkpointed(PI0Model(config)).eval()
    assert torch.is_grad_enabled()
    calls = _loss_calls(model, config, layer_calls, backward=True)
    assert calls == config.engine.backbone.depth  # backward ran without a recompute


def test_sampling_runs_each_layer_once_per_engine_call(layer_calls) -> None:
    config = tiny_pi0_config("pi0")
    model = _checkpointed(PI0Model(config)).eval()
    layer_calls["calls"] = 0
    model.sample_actions(random_observation(config), num_steps=2)
    assert layer_calls["calls"] == 3 * config.engine.backbone.depth  # prefix + 2 steps


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.dropout = nn.Dropout(0.5)

    def forward(self, x, *, scale=1.0):
        return self.dropout(self.inner(x)) * scale


class _Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])

    def forward(self, x):
        return self.blocks[1](self.blocks[0](x, scale=2.0), scale=0.5)


def test_generic_wrapper_one_granularity_rng_and_deepcopy() -> None:
    torch.manual_seed(0)
    model = _Stack()
    reference = copy.deepcopy(model)
    # The root matches: nothing below it is wrapped (one granularity).
    assert apply_activation_checkpointing(model, (_Stack, _Block)) == 1
    assert not is_activation_checkpointed(model.blocks[0])
    assert remove_activation_checkpointing(model) == 1
    # Blocks match; the Sequential nested inside each block is left alone.
    assert apply_activation_checkpointing(model, (_Block, nn.Sequential)) == 2
    assert not is_activation_checkpointed(model.blocks[0].inner)
    assert apply_activation_checkpointing(model, (_Block,)) == 0  # idempotent
    copied = copy.deepcopy(model)
    assert is_activation_checkpointed(copied.blocks[0])
    assert copied.blocks[0].forward.__self__ is copied.blocks[0]  # rebound to the copy
    x = torch.randn(3, 4, requires_grad=True)
    outs, grads = [], []
    for m in (reference, model, copied):
        torch.manual_seed(1)  # dropout draws must match across the recompute
        out = m(x)
        out.sum().backward()
        outs.append(out)
        grads.append([p.grad.clone() for p in m.parameters()])
    for out, grad in zip(outs[1:], grads[1:]):
        assert torch.equal(out, outs[0])
        assert all(torch.equal(a, b) for a, b in zip(grad, grads[0]))
    with pytest.raises(ValueError, match="at least one layer type"):
        apply_activation_checkpointing(model, ())
