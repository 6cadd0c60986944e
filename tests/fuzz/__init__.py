"""Fuzzing: property-based tests (hypothesis) and bounded atheris runs. ``make test`` runs them at CI size;
``make fuzz`` (``LFMC_FUZZ_SCALE=20``) runs every property and fuzzer twenty times as long."""
import os

SCALE = max(1, int(os.environ.get("LFMC_FUZZ_SCALE", "1")))
