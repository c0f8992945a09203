"""What the manager reads from the machine: the cgroup's CPU quota and memory headroom (fake cgroup trees)."""

from __future__ import annotations

from pathlib import Path

import psutil

from corral.manager.policy import auto_workers
from corral.manager.resources import cgroup_cpu_quota, memory_available


def test_cgroup_v2_cpu_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    assert auto_workers(8, cgroup_cpu_quota(tmp_path)) == 2  # --workers auto in a 1.5-CPU container


def test_cgroup_v2_without_a_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    assert auto_workers(8, None) == 8


def test_cgroup_v1_cpu_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None


def test_memory_headroom_of_a_cgroup_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text(f"{512 * 2**20}\n")
    (tmp_path / "memory.current").write_text(f"{200 * 2**20}\n")
    assert memory_available(tmp_path) == min(312 * 2**20, psutil.virtual_memory().available)


def test_unlimited_cgroup_memory_is_the_machine_s(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("1000\n")
    available = psutil.virtual_memory().available
    assert abs(memory_available(tmp_path) - available) < 256 * 2**20  # the machine's, give or take a moment


def test_accept_queue_counts_connections_no_worker_accepted() -> None:
    import socket

    from corral.manager.resources import accept_queue

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(77)
        assert accept_queue(listener) == (0, 77)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(5)]
        try:
            assert accept_queue(listener) == (5, 77)
        finally:
            for client in clients:
                client.close()
