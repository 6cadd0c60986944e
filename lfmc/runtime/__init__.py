"""lfmc's runtime: loads a compiled artifact and runs it. Needs numpy, safetensors, the tokenizer and the
device driver's library (TVM's runtime for `cpu`); never torch, transformers or the compiler."""
from .engine import Engine, GenerationResult
from .errors import EngineError, RuntimeLoadError

__all__ = ["Engine", "EngineError", "GenerationResult", "RuntimeLoadError"]
