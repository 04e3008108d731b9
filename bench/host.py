"""The host the benchmarks ran on, as one JSON line recorded with the
measurements: the ratios move with the CPU (ONNX Runtime, PyTorch's oneDNN
and bfx's GEMMs use AVX-512 where the CPU has it)."""
import json
import os
import platform

model, flags = platform.machine(), set()
try:
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
except OSError:
    pass
print(json.dumps({"bench": "host", "cpu": model, "arch": platform.machine(),
                  "cpus": os.cpu_count(), "avx512": "avx512f" in flags}))
