"""Beyond one machine (issue 10): three hosts as network namespaces on a bridge, each running `corral run`
with the same app and release, one PostgreSQL as the pre-start lock, HAProxy in front checking /readyz.

- the pre-start step runs exactly once across the three hosts, per release;
- a host-by-host rolling deploy of r2 (SIGTERM with --drain-delay: /readyz fails, HAProxy drains the host;
  r2 starts there; next host) under wrk through HAProxy loses no request;
- SIGKILL of one host's Corral: HAProxy routes around it; only requests in flight on that host fail.

Everything (namespaces, veths, the bridge, PostgreSQL, HAProxy) is created and removed by the test; traffic
stays on the bridge and loopback. docs/deployment.md gives the recipe and the figures measured here.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness import corral_command, free_port, wait_for, write_app
from postgres import _bindir

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces, veths and a bridge"),
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs HAProxy (Debian package haproxy)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip (Debian package iproute2)"),
]

APP = """
    import asyncio, os

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await asyncio.sleep(0.005)  # a little work, so requests are in flight
        body = os.environ.get("APP_RELEASE", "?").encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
"""

HAPROXY_CFG = """\
global
    maxconn 2000
    stats socket {stats} mode 600 level admin
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch

frontend web
    bind 127.0.0.1:{port}
    default_backend corral

backend corral
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 2
{servers}
"""

DRAIN_DELAY = 1.0


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@dataclass
class Host:
    name: str  # the network namespace
    address: str
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None


class Lab:
    """A bridge, three namespaces with a veth each, PostgreSQL on the bridge's address."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        tag = secrets.token_hex(3)
        self.bridge = f"crl{tag}"
        self.subnet = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}"
        self.gateway = f"{self.subnet}.1"
        self.hosts = [Host(f"crl-{tag}-h{n}", f"{self.subnet}.{10 + n}") for n in (1, 2, 3)]
        self.created_links: list[str] = []
        self.created_namespaces: list[str] = []

    def build(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.created_links.append(self.bridge)
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for number, host in enumerate(self.hosts, 1):
            sh("ip", "netns", "add", host.name)
            self.created_namespaces.append(host.name)
            outside = f"{self.bridge}v{number}"
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", host.name)
            self.created_links.append(outside)
            sh("ip", "link", "set", outside, "master", self.bridge, "up")
            sh("ip", "-n", host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
            sh("ip", "-n", host.name, "link", "set", "eth0", "up")
            sh("ip", "-n", host.name, "link", "set", "lo", "up")

    def remove(self) -> None:
        for namespace in self.created_namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        for link in reversed(self.created_links):
            subprocess.run(["ip", "link", "del", link], capture_output=True)


@contextlib.contextmanager
def lab(tmp_path: Path) -> Iterator[Lab]:
    built = Lab(tmp_path)
    try:
        built.build()
        yield built
    finally:
        built.remove()


@contextlib.contextmanager
def postgres_on(address: str) -> Iterator[str]:
    """The test's own PostgreSQL, listening on the bridge address the namespaces reach."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="corral-pg-hosts-"))
    account = pwd.getpwnam("postgres")
    os.chown(root, account.pw_uid, account.pw_gid)
    as_user = ["runuser", "-u", "postgres", "--"]
    data, logfile = root / "data", root / "server.log"
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile)]
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "--no-sync"], check=True, capture_output=True)  # fmt: skip
        subnet = address.rsplit(".", 1)[0] + ".0/24"
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {subnet} trust\n")
        options = f"-c listen_addresses={address} -c port=5432 -c unix_socket_directories={root} -c fsync=off"
        started = subprocess.run([*pg_ctl, "-o", options, "-w", "-t", "120", "start"], capture_output=True)
        assert started.returncode == 0, logfile.read_text() if logfile.exists() else started
        try:
            yield f"postgresql://postgres@{address}:5432/postgres"
        finally:
            subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class HAProxy:
    def __init__(self, tmp_path: Path, hosts: list[Host]) -> None:
        self.port = free_port()
        self.stats = tmp_path / "haproxy.sock"
        servers = "\n".join(f"    server {h.name[-2:]} {h.address}:8000 check port 9000" for h in hosts)
        self.config = HAPROXY_CFG.format(stats=self.stats, port=self.port, servers=servers)
        config = tmp_path / "haproxy.cfg"
        config.write_text(self.config)
        subprocess.run(["haproxy", "-c", "-f", str(config)], check=True, capture_output=True)
        self.log = tmp_path / "haproxy.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=out, stderr=out)

    def failed_requests(self) -> list[str]:
        """The server of every request that got a 5xx from HAProxy (dontlog-normal logs only the abnormal
        ones: failures, and retried requests that then succeeded elsewhere, logged with their 200)."""
        entries = re.findall(r" web corral/(\S+) [-\d/+]+ (-?\d+) ", self.log.read_text())
        return [server for server, status in entries if not 200 <= int(status) < 400]

    def states(self) -> dict[str, str]:
        """Each server's status (UP, DOWN, ...), from the stats socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = [line.split(",") for line in data.decode().splitlines() if line and not line.startswith("#")]
        return {row[1]: row[17] for row in rows if row[0] == "corral" and row[1] not in ("BACKEND", "FRONTEND")}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def start(host: Host, tmp_path: Path, release: str, lock: str, runs: Path) -> None:
    log = tmp_path / f"{host.name}-{release}.log"
    step = f"echo {host.name} {release} >> {runs}; sleep 0.5"
    command = [
        "ip", "netns", "exec", host.name, "env", f"APP_RELEASE={release}",
        *corral_command(
            "run", "app:app", "--app-dir", str(tmp_path), "-b", f"{host.address}:8000", "-w", "1",
            "--admin-bind", f"{host.address}:9000", "--release", release, "--prestart", step,
            "--prestart-lock", lock, "--drain-delay", str(DRAIN_DELAY), "--name", host.name,
            "--control", str(tmp_path / f"{host.name}.sock"), "--no-access-log",
        ),
    ]  # fmt: skip
    with open(log, "wb") as out:
        host.process = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    host.log = log


def stop_host(host: Host, sig: int = signal.SIGTERM) -> None:
    if host.process is not None and host.process.poll() is None:
        host.process.send_signal(sig)
        host.process.wait(60)


def wait_up(haproxy: HAProxy, hosts: list[Host]) -> None:
    def up() -> bool:
        for host in hosts:
            assert host.process is not None and host.process.poll() is None, host.log.read_text()  # type: ignore[union-attr]
        for host in hosts:  # ready by its own account, not only HAProxy's initial state
            if httpx.get(f"http://{host.address}:9000/readyz", timeout=5).status_code != 200:
                return False
        states = haproxy.states()
        return all(states.get(host.name[-2:]) == "UP" for host in hosts)

    wait_for(up, 90, "every host UP in HAProxy")


@dataclass
class WrkResult:
    requests: int
    errors: int  # socket errors of every kind
    non_2xx: int
    text: str


def wrk_start(port: int, seconds: int = 120) -> subprocess.Popen[str]:
    """Bounded load: 8 connections, at most 120 s; stopped with SIGINT when the scenario is done."""
    return subprocess.Popen(
        ["wrk", "-t", "2", "-c", "8", "-d", f"{seconds}s", "--timeout", "10s", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wrk_stop(process: subprocess.Popen[str], interrupt: bool = True) -> WrkResult:
    if interrupt:
        process.send_signal(signal.SIGINT)
    text, _ = process.communicate(timeout=60)
    requests = re.search(r"(\d+) requests in", text)
    assert requests, text
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        int(requests.group(1)),
        sum(int(n) for n in errors.groups()) if errors else 0,
        int(non_2xx.group(1)) if non_2xx else 0,
        text,
    )


def releases_served(port: int, count: int = 30) -> set[str]:
    return {httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text for _ in range(count)}


def test_three_hosts_behind_haproxy(tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    runs = tmp_path / "prestart-runs"
    with lab(tmp_path) as net, postgres_on(net.gateway) as lock:
        haproxy = HAProxy(tmp_path, net.hosts)
        try:
            for host in net.hosts:
                start(host, tmp_path, "r1", lock, runs)
            wait_up(haproxy, net.hosts)
            assert runs.read_text().count(" r1\n") == 1, runs.read_text()  # once across the three hosts
            assert releases_served(haproxy.port) == {"r1"}

            # Rolling deploy of r2, host by host, under load.
            load = wrk_start(haproxy.port)
            began = time.monotonic()
            wait_for(lambda: load.poll() is None and time.monotonic() - began > 1, what="wrk running")
            drained_while_alive = []
            for host in net.hosts:
                server = host.name[-2:]
                old = host.process
                assert old is not None
                old.send_signal(signal.SIGTERM)

                def drained(server: str = server) -> bool:
                    return haproxy.states().get(server) != "UP"

                wait_for(drained, 30, f"{host.name} drained")
                drained_while_alive.append(old.poll() is None)  # HAProxy saw /readyz fail before the exit
                assert old.wait(60) == 0
                start(host, tmp_path, "r2", lock, runs)
                wait_up(haproxy, net.hosts)
            rolled = wrk_stop(load)
            rolling_seconds = time.monotonic() - began
            assert all(drained_while_alive)
            assert rolled.errors == 0 and rolled.non_2xx == 0, rolled.text
            assert rolled.requests > 100, rolled.text
            assert runs.read_text().count(" r2\n") == 1, runs.read_text()
            assert releases_served(haproxy.port) == {"r2"}

            # SIGKILL one whole host's Corral under load.
            assert haproxy.failed_requests() == []
            load = wrk_start(haproxy.port, seconds=4)
            began = time.monotonic()
            wait_for(lambda: time.monotonic() - began > 1, what="load before the kill")
            victim = net.hosts[2]
            assert victim.process is not None
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait(30)
            wait_for(lambda: haproxy.states().get(victim.name[-2:]) == "DOWN", 30, "the killed host DOWN")
            killed = wrk_stop(load, interrupt=False)
            failed_on = haproxy.failed_requests()
            # Only that host's requests failed (HAProxy logs each failed request with its server), and no
            # more than could be in flight there: wrk keeps 8 requests outstanding.
            assert set(failed_on) <= {victim.name[-2:]} and len(failed_on) <= 8, failed_on
            assert killed.non_2xx <= len(failed_on), killed.text
            # wrk counts a connection closed under it as a read error and reconnects. Around the kill that
            # happened 3 to 9 times in the runs made, for wrk's 8 connections; not explained yet (see
            # docs/deployment.md), so bounded at twice per connection rather than claimed absent.
            assert killed.errors <= 16, killed.text
            # Routed around: a new burst through HAProxy loses nothing.
            after = wrk_stop(wrk_start(haproxy.port, seconds=3), interrupt=False)
            assert after.errors == 0 and after.non_2xx == 0 and after.requests > 100, after.text
            assert haproxy.failed_requests() == failed_on
            print(
                f"\nrolling deploy of r2 over 3 hosts: {rolled.requests} requests in {rolling_seconds:.1f} s, "
                f"{rolled.errors + rolled.non_2xx} failed; SIGKILL of one host: {killed.requests} requests, "
                f"{killed.non_2xx} non-2xx, {killed.errors} wrk socket errors (HAProxy: {len(failed_on)} failed, "
                "all on that host); "
                f"afterwards: {after.requests} requests in 3 s, {after.errors + after.non_2xx} failed"
            )
        finally:
            for host in net.hosts:
                with contextlib.suppress(Exception):
                    stop_host(host, signal.SIGKILL)
            haproxy.stop()
