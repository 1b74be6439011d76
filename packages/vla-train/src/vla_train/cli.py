"""`vla-train` console script. The Hydra trainer replaces this entry point when it lands."""

from __future__ import annotations

import sys

EXPERIMENTS: dict[str, str] = {}


def main(argv: list[str] | None = None) -> int:
    """Print the available experiments; exit non-zero while none can run."""
    del argv
    if not EXPERIMENTS:
        print(
            "vla-train: no experiment is available yet (the PushT trainer is not built).",
            file=sys.stderr,
        )
        return 2
    for name, summary in sorted(EXPERIMENTS.items()):
        print(f"{name:24s} {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
