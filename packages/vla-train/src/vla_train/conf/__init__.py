"""Hydra configs of the vla-train app (package data, read with the compose API or @hydra.main)."""
