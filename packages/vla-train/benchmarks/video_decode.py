"""Frame throughput of video features (PyAV) vs PNG-in-parquet, side by side in one process.

Writes the same synthetic episodes (moving shapes on a gradient, with sensor-like noise) with
`LeRobotWriter` as PNG, AV1 (libsvtav1, lerobot's default settings) and H.264 (libx264), then
times, for each storage and frame size:
- `sequential`: `column.all()` (every frame once, front to back; what `preload()` does);
- `random`: single frames at random rows from a fresh column (one seek each; a DataLoader
  sample with the cache cold);
- `window`: 2 consecutive frames at random rows (`n_obs_steps=2`), cold cache.
Frames/s are the best of `--repeats` runs; ratios are to PNG random access at the same size.
One decoder thread per process (as in DataLoader workers).

    OMP_NUM_THREADS=1 uv run python packages/vla-train/benchmarks/video_decode.py --out /tmp/video_decode.json
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from vla_train.atomic import atomic_write_json
from vla_train.data import FeatureSpec, LeRobotWriter, read_frames
from vla_train.data.video import VideoEncoderSettings

STORAGES = ("png", "av1", "h264")


def episode_frames(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    cx, cy = rng.uniform(0.2, 0.8, 2)
    for t in range(n):
        cx, cy = np.clip(np.array([cx, cy]) + rng.normal(0, 0.02, 2), 0.1, 0.9)
        img = np.stack([120 + 80 * xx, 100 + 60 * yy, 140 - 50 * xx * yy], -1)
        img[(np.abs(xx - cx) < 0.1) & (np.abs(yy - cy) < 0.1)] = (220, 40, 40)
        img += rng.normal(0, 3, img.shape)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write(root: Path, storage: str, size: int, episodes: int, length: int) -> float:
    rng = np.random.default_rng(0)
    features = {"observation.image": FeatureSpec("image", (size, size, 3)),
                "action": FeatureSpec("float32", (2,))}  # fmt: skip
    settings = {
        "png": None,
        "av1": VideoEncoderSettings(),
        "h264": VideoEncoderSettings("libx264", crf=23, preset="medium"),
    }[storage]
    writer = LeRobotWriter(root, features, fps=10, task="t", video=settings is not None,
                           video_settings=settings)  # fmt: skip
    start = time.perf_counter()
    for _ in range(episodes):
        writer.add_episode({"observation.image": episode_frames(rng, length, size),
                            "action": np.zeros((length, 2), np.float32)})  # fmt: skip
    writer.finalize()
    return time.perf_counter() - start


def timed(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(root: Path, samples: int, repeats: int) -> dict[str, float]:
    n = read_frames(root).num_frames
    rows = np.random.default_rng(1).integers(0, n - 1, samples)

    def sequential() -> None:
        read_frames(root).images["observation.image"].all()

    def random_frames() -> None:
        column = read_frames(root).images["observation.image"]
        for r in rows:
            column.get(np.array([r]))

    def windows() -> None:
        column = read_frames(root).images["observation.image"]
        for r in rows:
            column.get(np.array([r, r + 1]))

    return {
        "sequential_fps": n / timed(sequential, repeats),
        "random_fps": samples / timed(random_frames, repeats),
        "window_fps": 2 * samples / timed(windows, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for storage in STORAGES:
                root = Path(tmp) / f"{storage}_{size}"
                encode_s = write(root, storage, size, args.episodes, args.length)
                disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
                row = {"size": size, "storage": storage, "frames": args.episodes * args.length,
                       "disk_mb": disk / 2**20, "write_s": encode_s,
                       **measure(root, args.samples, args.repeats)}  # fmt: skip
                results.append(row)
    header = (
        "| size | storage | disk MB | sequential f/s | random f/s | window f/s | random × PNG |"
    )
    print(header)
    print("|" + "---|" * 7)
    for row in results:
        png = next(r for r in results if r["size"] == row["size"] and r["storage"] == "png")
        print(f"| {row['size']}² | {row['storage']} | {row['disk_mb']:.2f} | "
              f"{row['sequential_fps']:.0f} | {row['random_fps']:.0f} | {row['window_fps']:.0f} | "
              f"{row['random_fps'] / png['random_fps']:.2f} |")  # fmt: skip
    if args.out is not None:
        payload = {"results": results, "args": {k: str(v) for k, v in vars(args).items()},
                   "av": av.__version__, "machine": platform.machine(),
                   "note": "shared 2-core CPU; timings are indicative"}  # fmt: skip
        atomic_write_json(args.out, payload, indent=2)


if __name__ == "__main__":
    main()
