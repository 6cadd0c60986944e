"""lfmc: a compiler that specializes Liquid Foundation Models (LFM2, LFM2-MoE) for the hardware they run on."""
__version__ = "0.1.0"
