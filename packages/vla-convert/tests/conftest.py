"""Shared fixtures: tiny random openpi checkpoints written with orbax (seconds on CPU)."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
