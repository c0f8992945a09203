"""Facts about the machine and the workers: CPU quota, memory available, per-process CPU and memory.

Reading /proc can fail (a full file descriptor table gives EMFILE): each function then answers "unknown"
(None, or no entry) instead of raising, so sampling never stops the manager's loop.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP = Path("/sys/fs/cgroup")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def cgroup_cpu_quota(root: Path = CGROUP) -> float | None:
    """CPUs allowed by the cgroup (v2 cpu.max, or v1 cfs quota), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def memory_available(root: Path = CGROUP) -> int:
    """Memory this instance may still use: free memory, or the cgroup's headroom when that is lower."""
    try:
        available = int(psutil.virtual_memory().available)
    except OSError:  # /proc/meminfo unreadable (no file descriptor left): sysinfo(2) needs none
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - current)
    except (OSError, ValueError):
        pass
    return max(0, available)


@dataclass(frozen=True)
class ProcessMemory:
    rss: int
    uss: int
    pss: int


class ProcessSampler:
    """Keeps psutil handles so CPU percentages are measured between two samples."""

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}
        self.cpu: dict[int, float] = {}

    def sample_cpu(self, pids: list[int]) -> None:
        for pid in list(self._processes):
            if pid not in pids:
                del self._processes[pid]
                self.cpu.pop(pid, None)
        for pid in pids:
            try:
                process = self._processes.get(pid) or self._processes.setdefault(pid, psutil.Process(pid))
                self.cpu[pid] = process.cpu_percent(None)
            except (psutil.Error, OSError):  # OSError: /proc unreadable, as with a full fd table
                self.cpu.pop(pid, None)

    @staticmethod
    def memory(pid: int) -> ProcessMemory | None:
        try:
            info = psutil.Process(pid).memory_full_info()
        except (psutil.Error, OSError):
            return None
        return ProcessMemory(int(info.rss), int(getattr(info, "uss", info.rss)), int(getattr(info, "pss", info.rss)))


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss(pid: int) -> int | None:
    """Resident memory of a process from /proc/PID/statm (one short read, no parsing of smaps), or None."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def cpu_wait_ns(pid: int) -> int | None:
    """Nanoseconds the process's main thread (a worker's event loop) has spent runnable but waiting for a CPU
    (`/proc/PID/schedstat`), or None where unknown."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None


def tree_pss(pid: int) -> dict[int, int]:
    """PSS of `pid` and of each of its descendants (the whole instance, including what the app started): shared
    pages are split between the processes that map them, so the sum counts each page once."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    found: dict[int, int] = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            info = process.memory_full_info()
            found[process.pid] = int(getattr(info, "pss", info.rss))
    return found


_TCP_INFO_QUEUE = struct.Struct("=II")  # tcpi_unacked, tcpi_sacked: at offset 24 of struct tcp_info
_TCP_INFO_QUEUE_OFFSET = 24


def accept_queue(sock: socket.socket) -> tuple[int, int] | None:
    """(connections waiting in a TCP listener's accept queue, the queue's limit), or None where unknown.

    For a listening socket, Linux reports the current and the maximum backlog in `tcp_info`'s `unacked` and
    `sacked` fields: one getsockopt, no reading of /proc.
    """
    if sys.platform != "linux" or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    if len(info) < _TCP_INFO_QUEUE_OFFSET + _TCP_INFO_QUEUE.size:
        return None
    waiting, limit = _TCP_INFO_QUEUE.unpack_from(info, _TCP_INFO_QUEUE_OFFSET)
    return int(waiting), int(limit)
