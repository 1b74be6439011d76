"""Generate a PushT demonstration dataset with the scripted expert (LeRobot v3.0 layout).

Seeds `seed, seed+1, ...` are rolled out in parallel processes; each finished seed is saved at
once under `<out>.episodes/` (atomic .npz), so an interrupted run resumes where it stopped. The
dataset keeps the first `num_episodes` *successful* seeds in seed order, so the result depends
only on (`num_episodes`, `seed`, `image`, the expert), not on the number of workers.
The command line lives in `vla_train/pusht/__main__.py`.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vla_train.data.layout import FeatureSpec, atomic_write_bytes, atomic_write_json
from vla_train.data.writer import LeRobotWriter, encode_png
from vla_train.pusht.episodes import FPS, TASK, Episode, run_expert_episode

#: Bump when the expert or the recorded columns change: it names the cache folder.
EXPERT_VERSION = "expert-v3"
#: The same for the analytic controller (`task.expert=controller`).
CONTROLLER_VERSION = "controller-v1"


def expert_version(expert: str) -> str:
    return CONTROLLER_VERSION if expert == "controller" else EXPERT_VERSION


GENERATION_META = "meta/pusht_generation.json"


def pusht_features(image: bool) -> dict[str, FeatureSpec]:
    features = {
        "observation.state": FeatureSpec("float32", (2,), ("x", "y")),
        "observation.environment_state": FeatureSpec("float32", (16,)),
        "action": FeatureSpec("float32", (2,), ("x", "y")),
        # True where the expert planned afresh (its decision points; the policy's are the same).
        "expert.replanned": FeatureSpec("bool", (1,)),
        "next.reward": FeatureSpec("float32", (1,)),
        "next.success": FeatureSpec("bool", (1,)),
        "next.done": FeatureSpec("bool", (1,)),
    }
    if image:
        features["observation.image"] = FeatureSpec("image", (96, 96, 3))
    return features


@dataclass(frozen=True)
class SeedResult:
    seed: int
    success: bool
    max_coverage: float
    planning_seconds: float
    length: int


def _episode_path(scratch: Path, seed: int) -> Path:
    return scratch / f"seed-{seed:07d}.npz"


def _run_and_save(job: tuple[int, bool, str, float, str]) -> SeedResult:
    """Worker: roll out one seed and save it (frames only when it succeeded)."""
    seed, image, scratch, action_noise, expert = job
    episode = run_expert_episode(seed, image=image, action_noise=action_noise, expert=expert)
    arrays: dict[str, Any] = {
        "success": episode.success,
        "max_coverage": episode.max_coverage,
        "planning_seconds": episode.planning_seconds,
        "length": episode.length,
    }
    if episode.success:
        arrays.update({f"frame/{k}": v for k, v in episode.frames.items()})
        if "observation.image" in episode.frames:
            # PNG-encode here, in parallel with the other workers, not in the writer process.
            blobs = [encode_png(f) for f in episode.frames["observation.image"]]
            arrays["png/observation.image"] = np.frombuffer(b"".join(blobs), np.uint8)
            arrays["png_offsets/observation.image"] = np.cumsum([0, *map(len, blobs)])
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(_episode_path(Path(scratch), seed), buf.getvalue())
    return _summary(episode)


def _summary(episode: Episode) -> SeedResult:
    return SeedResult(
        episode.seed,
        episode.success,
        episode.max_coverage,
        episode.planning_seconds,
        episode.length,
    )


def _load_result(path: Path, seed: int) -> SeedResult:
    with np.load(path) as z:
        return SeedResult(
            seed,
            bool(z["success"]),
            float(z["max_coverage"]),
            float(z["planning_seconds"]),
            int(z["length"]),
        )


def _load_frames(path: Path) -> tuple[dict[str, np.ndarray], dict[str, list[bytes]]]:
    """A saved episode's frames, and the PNG bytes of its images."""
    with np.load(path) as z:
        frames = {k.removeprefix("frame/"): z[k] for k in z.files if k.startswith("frame/")}
        encoded = {}
        for k in z.files:
            if k.startswith("png/"):
                key = k.removeprefix("png/")
                data, offsets = z[k].tobytes(), z[f"png_offsets/{key}"]
                encoded[key] = [data[a:b] for a, b in itertools.pairwise(offsets.tolist())]
    return frames, encoded


def _kept(results: dict[int, SeedResult], seed: int, num_episodes: int) -> list[int] | None:
    """The first `num_episodes` successful seeds from `seed` on, if the seeds before the last
    of them are all done; else None."""
    kept, s = [], seed
    while s in results:
        if results[s].success:
            kept.append(s)
            if len(kept) == num_episodes:
                return kept
        s += 1
    return None


def generate_dataset(
    out: Path,
    num_episodes: int,
    seed: int = 0,
    image: bool = True,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    action_noise: float = 0.0,
    expert: str = "planner",
) -> Path:
    """Roll out seeds until `num_episodes` succeed; write them as a LeRobot v3.0 dataset.
    `action_noise`, `expert`: see `run_expert_episode`."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes={num_episodes}: expected >= 1")
    if workers < 1:
        raise ValueError(f"workers={workers}: expected >= 1")
    if action_noise < 0:
        raise ValueError(f"action_noise={action_noise}: expected >= 0")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    scratch = out.with_name(out.name + ".episodes")
    scratch.mkdir(parents=True, exist_ok=True)
    request = {
        "seed": seed,
        "image": image,
        "expert_version": expert_version(expert),
        "action_noise": action_noise,
    }
    request_path = scratch / "request.json"
    if request_path.is_file() and json.loads(request_path.read_text()) != request:
        raise ValueError(
            f"{scratch} holds episodes of another request ({request_path.read_text().strip()}); "
            f"delete it or pick another --out"
        )
    atomic_write_json(request_path, request)
    results: dict[int, SeedResult] = {}
    next_seed = seed
    bar = tqdm(total=num_episodes, desc="pusht expert demos", unit="ep", disable=not progress)
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        while (kept := _kept(results, seed, num_episodes)) is None:
            successes = sum(r.success for r in results.values())
            # The missing successes plus ~5 % for failures, at least one seed per worker.
            missing = num_episodes - successes
            batch = max(workers, missing + missing // 20)
            todo = []
            for s in range(next_seed, next_seed + batch):
                path = _episode_path(scratch, s)
                if path.is_file():
                    results[s] = _load_result(path, s)  # resumed from an earlier run
                    bar.update(int(results[s].success and bar.n < num_episodes))
                else:
                    todo.append((s, image, str(scratch), action_noise, expert))
            next_seed += batch
            done_iter = (
                pool.imap_unordered(_run_and_save, todo)
                if pool is not None
                else map(_run_and_save, todo)
            )
            for result in done_iter:
                results[result.seed] = result
                bar.update(int(result.success and bar.n < num_episodes))
                tried = len(results)
                bar.set_postfix(success=f"{sum(r.success for r in results.values()) / tried:.0%}")
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    tried_seeds = [s for s in sorted(results) if s <= kept[-1]]
    writer = LeRobotWriter(out, pusht_features(image), fps=FPS, task=TASK, overwrite=overwrite)
    for s in kept:
        frames, encoded = _load_frames(_episode_path(scratch, s))
        writer.add_episode({k: frames[k] for k in writer.features}, encoded)
    writer.finalize()
    summary = {
        "generator": "vla_train.pusht.generate",
        "expert_version": expert_version(expert),
        "first_seed": seed,
        "episode_seeds": kept,
        "seeds_tried": len(tried_seeds),
        "success_rate": len(kept) / len(tried_seeds),
        "mean_max_coverage": float(np.mean([results[s].max_coverage for s in tried_seeds])),
        "mean_planning_seconds": float(np.mean([results[s].planning_seconds for s in tried_seeds])),
        "image": image,
        "action_noise": action_noise,
    }
    atomic_write_json(out / GENERATION_META, summary)
    shutil.rmtree(scratch)
    return out


def cache_dir() -> Path:
    """`$VLA_CACHE_DIR`, else `$XDG_CACHE_HOME/vla`, else `~/.cache/vla`."""
    if os.environ.get("VLA_CACHE_DIR"):
        return Path(os.environ["VLA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vla"


def default_dataset_path(
    num_episodes: int = 200,
    seed: int = 0,
    image: bool = True,
    action_noise: float = 0.0,
    expert: str = "planner",
) -> Path:
    kind = "image" if image else "lowdim"
    noise = f"-noise{action_noise:g}" if action_noise > 0 else ""
    name = f"{expert_version(expert)}-{kind}-n{num_episodes}-seed{seed}{noise}"
    return cache_dir() / "pusht" / name


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_default_dataset(
    num_episodes: int = 200,
    seed: int = 0,
    image: bool = True,
    workers: int | None = None,
    progress: bool = True,
    action_noise: float = 0.0,
    expert: str = "planner",
) -> Path:
    """The cached expert dataset for these arguments; generated (resumably, in parallel) on
    first use. Concurrent callers wait on a file lock instead of generating twice."""
    root = default_dataset_path(num_episodes, seed, image, action_noise, expert)
    if (root / GENERATION_META).is_file():
        return root
    with _file_lock(root.with_name(root.name + ".lock")):
        if not (root / GENERATION_META).is_file():
            n = workers if workers is not None else len(os.sched_getaffinity(0))
            print(f"vla: generating the PushT expert dataset into {root} (once)", file=sys.stderr)
            generate_dataset(
                root,
                num_episodes,
                seed,
                image,
                workers=n,
                progress=progress,
                overwrite=True,
                action_noise=action_noise,
                expert=expert,
            )
    return root
