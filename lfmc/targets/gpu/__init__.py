"""GPU families (OpenCL, CUDA, Metal, ROCm): the backend (:mod:`.backend`, no TVM import) and the device build
(:mod:`.build`: schedules, device code, launch tables)."""
