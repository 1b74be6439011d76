"""Render an expert episode as a PNG strip of evenly spaced frames, or as a GIF.

    uv run --package vla-train python -m vla_train.pusht.render --seed 0 \\
        --out packages/vla-train/docs/pusht_expert.png [--gif /tmp/pusht_expert.gif]

Frames come from gym-pusht's own renderer (`env.render()`, with its red marker on the action).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vla_train.atomic import write_gif
from vla_train.pusht.episodes import Episode, run_expert_episode


def record_episode(seed: int, size: int = 160) -> tuple[Episode, list[np.ndarray], list[float]]:
    """Run the expert; return the episode, one [size, size, 3] frame per step (reset included)
    and the coverage after each step (0 at reset)."""
    if size < 96:  # gym-pusht draws the action marker with thickness int(size / 96)
        raise ValueError(f"size={size}: gym-pusht's renderer needs at least 96 pixels")
    frames: list[np.ndarray] = []
    coverage: list[float] = []

    def grab(env: Any) -> None:
        frames.append(env.render())
        coverage.append(float(env.unwrapped._get_coverage()))

    episode = run_expert_episode(
        seed,
        image=False,
        on_step=grab,
        env_kwargs={"visualization_width": size, "visualization_height": size},
    )
    return episode, frames, coverage


def episode_strip(frames: list[np.ndarray], coverage: list[float], num: int = 8) -> Image.Image:
    """`num` evenly spaced frames (first and last included) side by side, each captioned with
    its step and the block's coverage of the target."""
    picks = np.unique(np.linspace(0, len(frames) - 1, num).round().astype(int))
    h, w, _ = frames[0].shape
    caption, gap = 16, 4
    strip = Image.new("RGB", (len(picks) * (w + gap) - gap, h + caption), "white")
    draw = ImageDraw.Draw(strip)
    for i, t in enumerate(picks):
        x = i * (w + gap)
        strip.paste(Image.fromarray(frames[t]), (x, caption))
        draw.text((x + 2, 2), f"t={t}  cov={coverage[t]:.2f}", fill="black")
    return strip


def save_gif(frames: list[np.ndarray], path: Path, fps: int = 10) -> None:
    write_gif(frames, path, fps=fps)  # the one GIF writer (vla_train.atomic)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("pusht_expert.png"), help="PNG strip")
    parser.add_argument("--gif", type=Path, default=None, help="also write every step as a GIF")
    parser.add_argument("--frames", type=int, default=8, help="frames in the strip")
    parser.add_argument("--size", type=int, default=160, help="frame size in pixels")
    args = parser.parse_args(argv)
    episode, frames, coverage = record_episode(args.seed, args.size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    episode_strip(frames, coverage, args.frames).save(args.out, optimize=True)
    if args.gif is not None:
        save_gif(frames, args.gif)
    print(
        f"seed {args.seed}: success={episode.success} steps={episode.length} "
        f"max coverage={episode.max_coverage:.3f} -> {args.out}"
        + (f", {args.gif}" if args.gif else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
