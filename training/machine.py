"""What machine a number was made on: CPU model and vendor, which records and golden files carry.

CPU float results depend on them (MKL and oneDNN choose kernels by vendor and instruction set), so every
recorded figure says where it comes from. Linux's /proc/cpuinfo; elsewhere what `platform` knows.
"""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_field(name: str) -> str | None:
    """The first `name : value` line of /proc/cpuinfo ('model name', 'vendor_id', ...), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """'AMD EPYC', 'Intel(R) Xeon(R) Processor', ..."""
    return cpu_field("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_vendor() -> str:
    """'GenuineIntel', 'AuthenticAMD', ..."""
    return cpu_field("vendor_id") or platform.processor() or platform.machine() or "unknown"
