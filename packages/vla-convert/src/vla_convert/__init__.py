"""openpi JAX/Flax checkpoints to PyTorch safetensors with exact LoRA merge."""

from importlib.metadata import version as _version

__version__ = _version("vla-convert")

__all__ = ["__version__"]
