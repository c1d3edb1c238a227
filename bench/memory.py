"""Peak memory of this process and all its descendants (Ray's raylet, GCS and workers), read from /proc.

Summed as PSS (proportional set size): Ray's object store is shared memory mapped into several processes, and a sum
of RSS would count those pages once per process.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def _tree_rss(root: int) -> int:
    return sum(pss for _, pss in _tree(root).values())


TICK = os.sysconf("SC_CLK_TCK")


def _tree(root: int, cpu: dict[int, float] | None = None) -> dict[int, tuple[str, int]]:
    """Each process of the tree under ``root``: its name (``ray::IDLE``, ``raylet``, ``python``) and PSS; ``cpu``
    gets each one's CPU-seconds so far (user + system)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    used: dict[int, float] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            parents[int(entry.name)] = int(fields[1])
            rss[int(entry.name)] = int(fields[21]) * page
            used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, ValueError):
            continue
    found, stack = {}, [root]
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    while stack:
        pid = stack.pop()
        if pid in rss:
            # PSS of the tree's processes only: smaps_rollup walks a process's page tables (costly for a Ray
            # worker mapping the object store), and reading it for every process on the machine took a CPU-second
            # in five of a 2-CPU run
            found[pid] = (_name(pid), _pss(Path(f"/proc/{pid}")) or rss[pid])
            if cpu is not None:
                cpu[pid] = max(cpu.get(pid, 0.0), used[pid])
        stack.extend(children.get(pid, []))
    return found


def _name(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    first = args[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first.split()[0]
    script = next((a.decode(errors="replace") for a in args[1:] if a.endswith(b".py")), "")
    return Path(script or first).name


def breakdown(processes: dict[int, tuple[str, int]]) -> str:
    """``name xN size`` per kind of process, largest first."""
    kinds: dict[str, list[int]] = {}
    for name, pss in processes.values():
        kinds.setdefault(name, []).append(pss)
    ordered = sorted(kinds.items(), key=lambda kv: -sum(kv[1]))
    return ", ".join(f"{name}{f' x{len(v)}' if len(v) > 1 else ''} {sum(v) / (1 << 20):.0f} MiB" for name, v in ordered)


def _pss(proc: Path) -> int:
    try:
        text = (proc / "smaps_rollup").read_text()
    except OSError:  # gone since its stat was read
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Samples the process tree's PSS every ``interval`` seconds while in the ``with`` block, and keeps the time the
    sampling itself took (``cost``: on 2 CPUs it competes with what it measures)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.cost = 0.0
        self.cpu: dict[int, float] = {}  # CPU-seconds of each process seen (a process's last half second is missed)
        self._base = sum(os.times()[:2])  # this process's CPU before the block
        self.peak = 0
        self.at_peak: dict[int, tuple[str, int]] = {}  # the processes at the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        began = time.perf_counter()
        processes = _tree(os.getpid(), self.cpu)
        self.cost += time.perf_counter() - began
        total = sum(pss for _, pss in processes.values())
        if total > self.peak:
            self.peak, self.at_peak = total, processes

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def cpu_seconds(self) -> float:
        """CPU-seconds of the tree in the block: this process's since it began, every other one's whole."""
        me = os.getpid()
        return sum(v for pid, v in self.cpu.items() if pid != me) + sum(os.times()[:2]) - self._base


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    with PeakMemory() as mem:
        out = fn(*args, **kwargs)
    timed.at_peak = mem.at_peak  # type: ignore[attr-defined]
    timed.cost = mem.cost  # type: ignore[attr-defined]
    timed.cpu = mem.cpu_seconds  # type: ignore[attr-defined]
    return out, time.perf_counter() - start, mem.peak
