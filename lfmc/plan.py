"""Facts about the artifact format that both sides share: the compiler writes them (``lfmc/targets``) and the
runtime reads them (``lfmc/runtime``). Imports nothing of lfmc, so either side may import it."""
from __future__ import annotations

SCHEMA_VERSION = 2      # 2: the target record names its family and backend; the manifest carries "options"
PLAN_VERSION = 1
ENTRIES = ("prefill", "decode")
