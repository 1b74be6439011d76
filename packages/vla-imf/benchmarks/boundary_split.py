"""iMF train-step time with and without the boundary-row split (`imf_loss(u_rows=…)`).

At `boundary_fraction = 0.5` half of each batch has r = t, where the compound velocity is `u`
itself; the split forwards those rows plainly and runs the tangent forward and the JVP only on
the other half. This times the full step (loss + backward + AdamW) of the PushT default policy
shape (and a wider one), eager and `torch.compile`d, both paths round-robin in one process, and
prints samples/s and the ratio. Usage (alone on the machine):

    OMP_NUM_THREADS=1 uv run python packages/vla-imf/benchmarks/boundary_split.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import pusht_policy, round_robin_median_s, write_result

from vla_imf._testing import random_batch
from vla_imf.objective import imf_loss

SHAPES = {"default 64x2": (64, 2), "long 128x3": (128, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_imf_boundary_split.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for shape, (n_emb, n_layer) in SHAPES.items():
        for compiled in (False, True):
            calls = {}
            for split in (True, False):
                torch.manual_seed(0)
                policy = pusht_policy(
                    backbone="attnres_full", n_emb=n_emb, n_layer=n_layer, n_head=4,
                    action_patch=16,
                )  # fmt: skip
                batch = random_batch(policy.config, batch=args.batch)
                opt = policy.configure_optimizers(1e-3, 1e-4, (0.9, 0.95))

                def whole(b, policy=policy):  # type: ignore[no-untyped-def]
                    """The policy's loss with one JVP over the whole batch (no `u_rows`)."""
                    cond = policy.encode_observations(b)
                    x = policy.normalizer.normalize("action", b["action"])
                    mask = ~b["action_is_pad"] if "action_is_pad" in b else None
                    u_fn = lambda z, r, t: policy.backbone(z, r, t, cond)  # noqa: E731
                    return imf_loss(u_fn, x, policy.config.objective_config, valid_mask=mask).loss

                loss_of = policy.compute_loss if split else whole
                fn = torch.compile(loss_of, dynamic=False) if compiled else loss_of

                def step(fn=fn, batch=batch, opt=opt) -> None:  # type: ignore[no-untyped-def]
                    loss = fn(batch)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                calls[split] = step
            median = round_robin_median_s(calls, args.warmup, args.repeats)
            row = {
                "shape": shape,
                "compiled": compiled,
                "split_samples_per_s": args.batch / median[True],
                "whole_samples_per_s": args.batch / median[False],
            }
            row["speedup"] = row["split_samples_per_s"] / row["whole_samples_per_s"]
            rows.append(row)
            print(row, flush=True)
    print(f"\n{args.threads} torch thread(s), batch {args.batch}, median of {args.repeats}")
    print("| policy | compiled | whole batch through the JVP | boundary rows split | speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['shape']} | {'yes' if r['compiled'] else 'no'} | "
            f"{r['whole_samples_per_s']:.0f} samples/s | {r['split_samples_per_s']:.0f} samples/s | "
            f"{r['speedup']:.2f}× |"
        )
    write_result(args.out, args, rows)


if __name__ == "__main__":
    main()
