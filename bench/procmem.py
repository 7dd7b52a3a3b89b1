"""Memory of this process for the benchmarks, from /proc/self (Linux).

VmHWM rather than getrusage's ru_maxrss: Linux keeps ru_maxrss across fork + exec, so a child
process would inherit its parent's peak (e.g. the graph generation before it).
"""
from __future__ import annotations


def status_bytes(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM, ...); 0 where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss() -> int:
    return status_bytes("VmRSS")


def peak_rss() -> int:
    return status_bytes("VmHWM")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
