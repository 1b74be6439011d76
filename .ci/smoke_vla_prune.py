"""Smoke use of the vla-prune wheel in a venv that holds nothing but torch and it."""

import importlib.util

import vla_prune

for absent in ("transformers", "jax", "hydra", "vla_core"):
    assert importlib.util.find_spec(absent) is None, f"{absent} leaked into the pip venv"
assert vla_prune.__version__ == "0.1.0", vla_prune.__version__
print(f"vla_prune {vla_prune.__version__} imported beside torch only")
