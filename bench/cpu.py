"""CPU time of a node's processes, read from /proc: what one request costs the node."""

from __future__ import annotations

import os
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """`pid` and every descendant (the workers of `serve --workers N`)."""
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 256:
        current = todo.pop()
        out.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return out


def _own_cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # after the command name (which may hold spaces): state is field 3, utime 14, stime 15
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds so far of every process in `pids` and their descendants
    (all threads; the kernel counts in clock ticks, 10 ms here)."""
    return sum(_own_cpu_s(p) for pid in pids for p in _tree(pid))


def _own_wait_s(pid: int) -> float:
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            # nanoseconds on a CPU, nanoseconds runnable but waiting for one, time slices
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def runqueue_wait_seconds(pids: list[int]) -> float:
    """Seconds the threads of `pids` (and descendants) were ready to run but waited for a
    CPU: on a shared machine, how much other work stood in the node's way."""
    return sum(_own_wait_s(p) for pid in pids for p in _tree(pid))
