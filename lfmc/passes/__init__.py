"""IR -> IR passes, one per file, composed into phases (canonicalize, fuse, prune, quantize, plan).
Passes may read a device profile; they never import target code."""
from .base import PHASES, REGISTRY, Pass
from .pipeline import DEFAULT, default_passes, describe, resolve, run_pipeline

__all__ = ["DEFAULT", "PHASES", "REGISTRY", "Pass", "default_passes", "describe", "resolve", "run_pipeline"]
