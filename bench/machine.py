"""A description of the machine a benchmark ran on (goes into every result file)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def describe() -> dict[str, object]:
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=20).stderr.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        java = None
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=20).stdout
        lscpu_fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        lscpu_fields = {k.strip(): v.strip() for k, v in lscpu_fields.items()}
    except (OSError, subprocess.SubprocessError):
        lscpu_fields = {}
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "os": platform.platform(),
            "python": platform.python_version(), "java": java, "lscpu": lscpu_fields}


def write_result(result: dict, out_dir: str, name: str) -> Path:
    """``<out_dir>/<name>-<local time>.json``: one benchmark run, next to the others."""
    import json
    import time

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    return path
