"""VLA fine-tuning on a generated LeRobot dataset (tiny pi0.5 / pi0, CPU, fp32).

Pins: a 20-step fine-tune lowers the loss on a fixed batch; resume from a DCP checkpoint gives
the same losses and weights as an uninterrupted run (exactly); DDP and FSDP2 with 2 gloo
processes agree with one process on the first losses (fp32 tolerance); the exported safetensors
load in vla-core and sample valid actions; the pruner's noise follows 1 − step/max_steps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from vla_core import load_pretrained
from vla_train.config import EMAConfig, ParallelConfig, TrainConfig, TrainSection, VLAConfig
from vla_train.loop import train, train_local_processes
from vla_train.vla import (
    PolicyConfig,
    PruningConfig,
    TinyTokenizer,
    VLADataConfig,
    VLADataset,
    build_policy,
    collate,
    write_synthetic_dataset,
)

TASK = "move red square"


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vla_ds") / "synthetic"
    return write_synthetic_dataset(root, num_episodes=4, episode_length=16, task=TASK)


def tiny_policy(variant: str = "pi05", **overrides: object) -> PolicyConfig:
    fields: dict[str, object] = {
        "variant": variant,
        "backbone": "gemma_tiny",
        "expert": "gemma_tiny_expert",
        "vision": "siglip_tiny",
        "num_cameras": 2,
        "action_horizon": 5,
        "max_token_len": 48,
        "attention_implementation": "eager",
    }
    fields.update(overrides)
    return PolicyConfig(**fields)  # type: ignore[arg-type]


def run_config(
    root: Path,
    steps: int = 20,
    *,
    policy: PolicyConfig | None = None,
    data: VLADataConfig | None = None,
    strategy: str = "auto",
    export: bool = True,
    checkpoint_every: int = 0,
    checkpoint_format: str = "auto",
) -> TrainConfig:
    """The `vla_finetune` recipe on the tiny model: what `experiment=pi05_finetune_tiny` sets."""
    train_section = TrainSection(
        max_steps=steps, batch_size=8, learning_rate=3e-3, warmup_steps=2, min_lr_ratio=0.1,
        weight_decay=1e-10, ema=EMAConfig(enabled=False), amp_bf16=False, num_threads=None,
        checkpoint_every_steps=checkpoint_every, checkpoint_format=checkpoint_format,
        log_every_steps=1, progress_bar=False,
    )  # fmt: skip
    vla = VLAConfig(
        policy=policy or tiny_policy(), data=data or VLADataConfig(str(root)), export=export
    )
    return TrainConfig(
        recipe="vla_finetune", train=train_section, seed=0, device="cpu", vla=vla,
        parallel=ParallelConfig(strategy=strategy),
    )  # fmt: skip


def finetune(config: TrainConfig, run_dir: Path, *, resume: bool = False) -> dict:
    return train(dataclasses.replace(config, resume=resume), run_dir)


def fixed_batch_loss(model: torch.nn.Module, root: Path, config: TrainConfig) -> float:
    """Mean masked loss over the first 16 frames with fixed noise and times."""
    mc = model.config  # type: ignore[attr-defined]
    assert config.vla is not None
    ds = VLADataset(
        config.vla.data, tokenizer=TinyTokenizer(), image_size=mc.vision.image_size,
        action_horizon=mc.action_horizon, pad_dim=mc.action_dim,
        max_token_len=mc.max_token_len, variant=mc.variant,
    )  # fmt: skip
    batch = collate([ds[i] for i in range(16)])
    gen = torch.Generator().manual_seed(123)
    noise = torch.randn(batch.actions.shape, generator=gen)
    time = torch.linspace(0.05, 0.95, 16)
    model.eval()
    with torch.no_grad():
        per = model(batch.observation, batch.actions, noise, time)
    return float((per * batch.action_mask).sum() / batch.action_mask.sum())


def test_twenty_steps_lower_the_loss_and_export_samples(dataset_root: Path, tmp_path: Path) -> None:
    config = run_config(dataset_root)
    assert config.vla is not None
    initial = build_policy(config.vla.policy, seed=config.seed)
    before = fixed_batch_loss(initial, dataset_root, config)
    metrics = finetune(config, tmp_path / "run")
    assert len(metrics["losses"]) == 20
    exported = load_pretrained(metrics["export_dir"])
    after = fixed_batch_loss(exported, dataset_root, config)
    assert after < 0.85 * before, (before, after)
    obs = collate(
        [
            VLADataset(
                config.vla.data,
                tokenizer=TinyTokenizer(),
                image_size=56,
                action_horizon=5,
                pad_dim=32,
                max_token_len=48,
                variant="pi05",
            )[0]
        ]
    )
    actions = exported.sample_actions(obs.observation, num_steps=4)
    assert actions.shape == (1, 5, 32) and torch.isfinite(actions).all()


@pytest.mark.parametrize("checkpoint_format", ["safetensors", "dcp"])
def test_resume_reproduces_an_uninterrupted_run(
    dataset_root: Path, tmp_path: Path, checkpoint_format: str
) -> None:
    steps = 6
    full = finetune(run_config(dataset_root, steps, export=True), tmp_path / "full")
    config = run_config(
        dataset_root, steps, checkpoint_every=3, export=True, checkpoint_format=checkpoint_format
    )
    first = finetune(dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=3)),
                     tmp_path / "split")  # fmt: skip
    # A new config with the full length; the checkpoint at step 3 is picked up.
    second = finetune(config, tmp_path / "split", resume=True)
    assert second["start_step"] == 3
    assert first["losses"] + second["losses"] == full["losses"]
    assert second["train_wall_s"] > second["segment_train_wall_s"] > 0  # both segments counted
    a = load_pretrained(full["export_dir"]).state_dict()
    b = load_pretrained(second["export_dir"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pruner_noise_follows_the_linear_schedule(dataset_root: Path, tmp_path: Path) -> None:
    policy = tiny_policy(pruning=PruningConfig(enabled=True, min_keep=8, max_steps=8))
    metrics = finetune(run_config(dataset_root, 4, policy=policy, export=False), tmp_path / "p")
    assert metrics["noise_scales"] == pytest.approx([1.0, 0.875, 0.75, 0.625])
    assert all(torch.isfinite(torch.tensor(metrics["losses"])))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_process_runs_match_one_process(
    dataset_root: Path, tmp_path: Path, strategy: str
) -> None:
    steps = 3
    single = finetune(run_config(dataset_root, steps, export=False), tmp_path / "single")
    config = run_config(dataset_root, steps, strategy=strategy, export=True)
    losses = train_local_processes(config, tmp_path / strategy, nprocs=2)["losses"]
    # fp32, different reduction order (two half-batch sums + gradient all-reduce).
    torch.testing.assert_close(
        torch.tensor(losses), torch.tensor(single["losses"]), rtol=1e-4, atol=1e-5
    )
    exported = load_pretrained(tmp_path / strategy / "export")
    assert exported.config.variant == "pi05"


def tiny_gemma3_policy(variant: str = "pi05", **overrides: object) -> PolicyConfig:
    return tiny_policy(
        variant, family="gemma3", backbone="gemma3_tiny", expert="gemma3_tiny_expert", **overrides
    )


def test_gemma3_policy_fine_tunes_and_two_ddp_processes_match_one(
    dataset_root: Path, tmp_path: Path
) -> None:
    """A tiny Gemma-3 pi0.5: one process lowers the loss and exports a loadable Gemma-3 model with
    the last layer's q-norm / sandwich norms frozen; DDP over 2 gloo processes matches it."""
    steps = 3
    config = run_config(dataset_root, steps, policy=tiny_gemma3_policy(), export=True)
    assert config.vla is not None
    model = build_policy(config.vla.policy)
    assert model.config.engine.family == "gemma3"
    last = len(model.engine.layers) - 1
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert f"engine.layers.{last}.backbone.self_attn.q_norm.weight" in frozen
    assert f"engine.layers.{last}.backbone.post_feedforward_layernorm.weight" in frozen
    single = finetune(config, tmp_path / "single")
    assert single["losses"][-1] < single["losses"][0]
    exported = load_pretrained(tmp_path / "single" / "export")
    assert exported.config.engine.family == "gemma3"
    ddp = run_config(dataset_root, steps, policy=tiny_gemma3_policy(), strategy="ddp", export=False)
    losses = train_local_processes(ddp, tmp_path / "ddp", nprocs=2)["losses"]
    torch.testing.assert_close(
        torch.tensor(losses), torch.tensor(single["losses"]), rtol=1e-4, atol=1e-5
    )


def test_fine_tunes_on_a_lerobot_written_video_dataset(tmp_path: Path) -> None:
    """Issue #16: lerobot 0.6.1's own AV1 video dataset (fixtures/lerobot/video, 18 frames, two
    cameras, q01/q99 in stats.json) fine-tunes with pi0.5's quantile normalisation, and 20 steps
    lower the fixed-batch loss (the CLI equivalent: `vla-train experiment=pi05_finetune_tiny
    vla.data.root=<fixture> vla.data.normalization=quantiles`)."""
    root = Path(__file__).parent / "fixtures" / "lerobot" / "video"
    config = run_config(root, data=VLADataConfig(str(root), normalization="quantiles"))
    assert config.vla is not None
    before = fixed_batch_loss(build_policy(config.vla.policy, seed=config.seed), root, config)
    metrics = finetune(config, tmp_path / "run")
    after = fixed_batch_loss(load_pretrained(metrics["export_dir"]), root, config)
    assert len(metrics["losses"]) == 20 and after < before, (before, after)


def test_synthetic_video_dataset_matches_the_png_one_up_to_the_codec(tmp_path: Path) -> None:
    png = write_synthetic_dataset(tmp_path / "png", num_episodes=2, episode_length=8)
    mp4 = write_synthetic_dataset(tmp_path / "mp4", num_episodes=2, episode_length=8, video=True)
    kwargs = {"tokenizer": TinyTokenizer(), "image_size": 56, "action_horizon": 5, "pad_dim": 32,
              "max_token_len": 48, "variant": "pi05"}  # fmt: skip
    a = VLADataset(VLADataConfig(str(png)), **kwargs)  # type: ignore[arg-type]
    b = VLADataset(VLADataConfig(str(mp4)), **kwargs)  # type: ignore[arg-type]
    for i in (0, 7, 15):
        x, y = a[i], b[i]
        for key in ("state", "actions", "action_mask", "tokens"):
            assert torch.equal(x[key], y[key]), key
        assert float((x["images"] - y["images"]).abs().mean()) < 0.05  # [-1, 1] scale
