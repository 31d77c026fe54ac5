"""What every benchmark measures the same way (imported by the scripts beside it)."""

from __future__ import annotations

import resource


def peak_rss_kb() -> int:
    """Peak resident memory of this process in KiB.

    VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a child started by a
    parent that built a big setup would report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
