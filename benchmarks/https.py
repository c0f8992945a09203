#!/usr/bin/env python3
"""HTTPS requests/s, 2 workers, FastAPI hello, one certificate: Corral (`--https localhost`, local CA),
uvicorn (`--ssl-certfile/--ssl-keyfile`), granian (`--ssl-certificate/--ssl-keyfile`) and Caddy
reverse-proxying to uvicorn (plain HTTP behind it). One run, one server at a time.

Run it with the project's interpreter (Corral comes from that environment; uvicorn and granian from the
peers' environment under benchmarks/.peers/, the one benchmarks/run.py creates; Caddy from Debian's
`caddy` package, wrk from `wrk`):

    .venv/bin/python benchmarks/https.py              # ~2 minutes
    .venv/bin/python benchmarks/https.py --quick      # a smoke run

Corral runs first: its local CA issues the leaf (STATE/certs/local/cert.pem and key.pem) that every
other server is then given. The table is printed and written to benchmarks/results/https.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # the sibling script's helpers
    BenchError,
    chosen_servers,
    free_port,
    parse_wrk,
    stop_tree,
    versions,
    wrk_and_corral,
)

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
REPORT_LUA = HERE / "report.lua"
HOST = "127.0.0.1"
NAME = "localhost"
APP = "hello_fastapi:app"
WORKERS = 2
SERVERS = ("corral", "uvicorn", "granian", "caddy")
LABELS = {"caddy": "Caddy -> uvicorn"}
# Packages pinned to Corral's versions when the peers' environment has to be created here.
PINNED = ("uvicorn", "uvloop", "httptools", "h11", "fastapi", "starlette", "pydantic", "psutil")
PEER_PACKAGES = ("uvicorn[standard]", "granian", "fastapi", "psutil")
VERSIONS = (*PINNED, "granian", "corral", "cryptography")
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Plan:
    warmup: float
    measure: float
    connections: int


@dataclass(frozen=True)
class Tools:
    corral_venv: Path
    peers_venv: Path
    wrk: str
    caddy: str | None

    def corral(self, *args: str) -> list[str]:
        return [str(self.corral_venv / "bin" / "corral"), *args]

    def peer(self, name: str, *args: str) -> list[str]:
        return [str(self.peers_venv / "bin" / name), *args]


@dataclass(frozen=True)
class Certificate:
    cert: Path  # the leaf alone, as Corral serves it
    key: Path  # PKCS#8 PEM (granian reads no other format)


def https_probe(port: int) -> tuple[str, str] | None:
    """(TLS version, cipher) of one successful GET /pid over HTTPS, None while nothing answers."""
    context = ssl._create_unverified_context()
    try:
        with (
            socket.create_connection((HOST, port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname=NAME) as sock,
        ):
            sock.sendall(f"GET /pid HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
            answer = sock.recv(4096)
            cipher = sock.cipher()
            version = sock.version() or "?"
    except OSError:
        return None
    if not answer.startswith(b"HTTP/1.1 200"):
        return None
    return version, cipher[0] if cipher else "?"


class Process:
    """One server process (and its children): started in its own session, stopped with its whole tree."""

    def __init__(self, argv: list[str], log: Path, cwd: Path, env: dict[str, str]) -> None:
        self.argv = argv
        self.log = log
        with log.open("ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.root = psutil.Process(self.process.pid)

    def check_alive(self, label: str) -> None:
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"{label} exited with status {code} (log: {self.log})")

    def stop(self, grace: float = 10) -> None:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        stop_tree(self.process, tree, grace)


def wait_ready(label: str, processes: list[Process], ready_dir: Path, port: int) -> tuple[str, str]:
    """Until WORKERS app workers have started (their lifespan marks `ready_dir`) and HTTPS answers."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        for process in processes:
            process.check_alive(label)
        if len(list(ready_dir.iterdir())) >= WORKERS:
            probe = https_probe(port)
            if probe is not None:
                return probe
        time.sleep(0.05)
    raise BenchError(f"{label}: not serving HTTPS within {READY_TIMEOUT:.0f} s (log: {processes[0].log})")


def caddyfile(port: int, upstream: int, cert: Certificate) -> str:
    """Caddy terminating TLS with the given certificate, proxying to uvicorn; no admin API, no ACME."""
    return (
        "{\n"
        "\tadmin off\n"
        "\tauto_https off\n"
        "\tskip_install_trust\n"
        "\tlog {\n\t\tlevel ERROR\n\t}\n"
        "}\n"
        f"https://{NAME}:{port} {{\n"
        f"\tbind {HOST}\n"
        f"\ttls {cert.cert} {cert.key}\n"
        f"\treverse_proxy {HOST}:{upstream}\n"
        "}\n"
    )


class Bench:
    def __init__(self, tools: Tools, plan: Plan, logs: Path) -> None:
        self.tools = tools
        self.plan = plan
        self.logs = logs
        self.commands: dict[str, list[str]] = {}
        self.errors: list[str] = []
        self.certificate: Certificate | None = None

    @contextlib.contextmanager
    def serve(self, server: str) -> Iterator[tuple[int, tuple[str, str]]]:
        """Start `server` on a fresh loopback port; yield (port, negotiated TLS); stop it."""
        with tempfile.TemporaryDirectory(prefix="corral-https-bench-") as tmp:
            scratch = Path(tmp)
            ready = scratch / "ready"
            ready.mkdir()
            env = {**os.environ, "BENCH_READY_DIR": str(ready), "PYTHONPATH": str(APPS)}
            env.pop("WEB_CONCURRENCY", None)
            port = free_port()
            started: list[Process] = []
            try:
                for key, argv, home in self.commands_for(server, port, scratch):
                    self.commands[key] = argv
                    log = self.logs / f"https-{key.replace(' ', '-')}.log"
                    started.append(Process(argv, log, APPS, {**env, "HOME": str(home)}))
                yield port, wait_ready(LABELS.get(server, server), started, ready, port)
            finally:
                for process in reversed(started):
                    process.stop()

    def commands_for(self, server: str, port: int, scratch: Path) -> list[tuple[str, list[str], Path]]:
        """(key, argv, HOME) of each process of `server`: the same options for all, each in its spelling."""
        tools, n = self.tools, str(WORKERS)
        quiet = ["--no-access-log", "--log-level", "warning"]
        if server == "corral":
            state = scratch / "state"
            argv = tools.corral("run", APP, "-w", n, "-b", f"{HOST}:{port}", "--https", NAME, "--state-dir",
                                str(state), "--control", str(scratch / "corral.sock"), *quiet)  # fmt: skip
            return [("corral", argv, scratch)]
        cert = self.certificate
        if cert is None:
            raise BenchError("no certificate: Corral's run (which issues it) failed")
        if server == "uvicorn":
            argv = tools.peer("uvicorn", APP, "--workers", n, "--host", HOST, "--port", str(port),
                              "--ssl-certfile", str(cert.cert), "--ssl-keyfile", str(cert.key), *quiet)  # fmt: skip
            return [("uvicorn", argv, scratch)]
        if server == "granian":
            argv = tools.peer("granian", "--interface", "asgi", "--workers", n, "--host", HOST, "--port",
                              str(port), "--ssl-certificate", str(cert.cert), "--ssl-keyfile", str(cert.key),
                              "--log-level", "warning", "--no-access-log", APP)  # fmt: skip
            return [("granian", argv, scratch)]
        if server == "caddy":
            if self.tools.caddy is None:
                raise BenchError("caddy not found (Debian: apt-get install caddy)")
            upstream = free_port()
            uvicorn = tools.peer("uvicorn", APP, "--workers", n, "--host", HOST, "--port", str(upstream), *quiet)
            config = scratch / "Caddyfile"
            config.write_text(caddyfile(port, upstream, cert))
            caddy = [self.tools.caddy, "run", "--config", str(config), "--adapter", "caddyfile"]
            return [("caddy upstream uvicorn", uvicorn, scratch), ("caddy", caddy, scratch)]
        raise ValueError(server)

    def take_certificate(self, state: Path, into: Path) -> None:
        """Corral's local-CA leaf (what Corral serves) as the certificate every other server gets."""
        issued = state / "certs" / "local"
        into.mkdir(parents=True, exist_ok=True)
        cert, key = into / "cert.pem", into / "key.pem"
        cert.write_bytes((issued / "cert.pem").read_bytes())
        key.write_bytes((issued / "key.pem").read_bytes())
        key.chmod(0o600)
        if b"BEGIN PRIVATE KEY" not in key.read_bytes():
            raise BenchError(f"{issued / 'key.pem'} is not PKCS#8")
        self.certificate = Certificate(cert, key)

    def wrk(self, port: int, duration: float) -> dict[str, Any]:
        argv = [self.tools.wrk, "-t2", f"-c{self.plan.connections}", f"-d{duration:g}s", "--timeout=5s",
                "--latency", "-s", str(REPORT_LUA)]  # fmt: skip
        if duration == self.plan.measure:
            self.commands["wrk"] = [*argv, f"https://{NAME}:PORT/"]
        done = subprocess.run([*argv, f"https://{NAME}:{port}/"], capture_output=True, text=True,
                              timeout=duration + 60, check=False)  # fmt: skip
        return parse_wrk(done.stdout, done.stderr)

    def measure(self, server: str, keep_state: Path) -> dict[str, Any]:
        label = LABELS.get(server, server)
        print(f"  {label} ...", end="", flush=True)
        try:
            with self.serve(server) as (port, (version, cipher)):
                if server == "corral":
                    state = Path(self.commands["corral"][self.commands["corral"].index("--state-dir") + 1])
                    self.take_certificate(state, keep_state)
                self.wrk(port, self.plan.warmup)
                result = {**self.wrk(port, self.plan.measure), "tls": f"{version} {cipher}"}
        except BenchError as exc:
            self.errors.append(f"{label}: {exc}")
            print(f" error: {exc}", flush=True)
            return {"error": str(exc)}
        print(f" {result['rps']:g} requests/s, p99 {result['p99_ms']:g} ms, {result['tls']}", flush=True)
        return result


# Setup and report --------------------------------------------------------------------------------


def ensure_peers(corral_venv: Path, peers_venv: Path) -> None:
    """Use the peers' environment of benchmarks/run.py; create it (pinned to Corral's versions) if absent."""
    if all((peers_venv / "bin" / name).is_file() for name in ("uvicorn", "granian")):
        return
    pinned = versions(corral_venv / "bin" / "python")
    requirements = []
    for package in PEER_PACKAGES:
        name = package.split("[")[0]
        requirements.append(f"{package}=={pinned[name]}" if name in pinned else package)
    requirements += [f"{name}=={pinned[name]}" for name in ("uvloop", "httptools", "h11") if name in pinned]
    print(f"creating the peers' environment in {peers_venv}", flush=True)
    subprocess.run([str(corral_venv / "bin" / "python"), "-m", "venv", str(peers_venv)], check=True)
    subprocess.run([str(peers_venv / "bin" / "python"), "-m", "pip", "install", "-q", *requirements], check=True)


def machine(tools: Tools) -> dict[str, Any]:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = re.search(r"^Model name:\s*(.+)$", cpu, re.M)
    wrk = subprocess.run([tools.wrk, "-v"], capture_output=True, text=True, check=False)
    caddy = (
        subprocess.run([tools.caddy, "version"], capture_output=True, text=True, check=False) if tools.caddy else None
    )
    git = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False)  # fmt: skip
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?",
        "caddy": caddy.stdout.strip().split()[0] if caddy and caddy.stdout.strip() else "-",
        "corral_commit": git.stdout.strip() or "?",
        "load_at_start": round(os.getloadavg()[0], 2),
        "corral_env": versions(tools.corral_venv / "bin" / "python"),
        "peers_env": versions(tools.peers_venv / "bin" / "python"),
    }


def render(results: dict[str, dict[str, Any]], plan: Plan) -> str:
    base = results.get("uvicorn", {}).get("rps")
    lines = [
        f"HTTPS, {APP}, {WORKERS} workers, wrk -t2 -c{plan.connections} -d{plan.measure:g}s "
        f"(after {plan.warmup:g} s of warm-up), keep-alive connections, one run",
        "",
        "| server | requests/s | p99 ms | failed | TLS negotiated | ratio to uvicorn |",
        "|---|---|---|---|---|---|",
    ]
    for server, result in results.items():
        label = LABELS.get(server, server)
        if "error" in result:
            lines.append(f"| {label} | error | - | - | - | - |")
            continue
        share = f"{result['rps'] / base:.2f}" if base else "-"
        lines.append(
            f"| {label} | {result['rps']:g} | {result['p99_ms']:g} | {result['failed']} | {result['tls']} | {share} |"
        )
    return "\n".join(lines)


def render_machine(info: dict[str, Any]) -> str:
    def env(versions: dict[str, str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))

    return "\n".join(
        [
            f"- CPU: {info['cpu']}, {info['cores']} cores; memory {info['memory_gib']} GiB; kernel {info['kernel']}",
            f"- load average (1 min) {info['load_at_start']:g} at the start, {info.get('load_at_end', '?')} at the end",
            f"- Python {info['python']} ({info['openssl']}); {info['wrk']}; Caddy {info['caddy']}; "
            f"Corral commit {info['corral_commit']}",
            f"- Corral's environment: {env(info['corral_env'])}",
            f"- peers' environment: {env(info['peers_env'])}",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 s warm-up, 3 s measurement (a smoke run)")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated subset of: {', '.join(SERVERS)}"
                        " (the others need corral, which issues the certificate)")  # fmt: skip
    parser.add_argument("--corral-venv", type=Path, default=Path(sys.prefix), help="environment Corral runs from")
    parser.add_argument("--peers-venv", type=Path, default=HERE / ".peers" / "venv", help="the peers' environment")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where https.md/json go")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers = chosen_servers(args.servers, list(SERVERS), "https.py")
    if servers is None:
        return 2
    if "corral" not in servers:
        servers.insert(0, "corral")  # it issues the certificate the others serve
    servers.sort(key=SERVERS.index)
    found = wrk_and_corral(args.corral_venv, "https.py")
    if found is None:
        return 2
    wrk, corral_venv = found
    peers_venv = args.peers_venv.resolve()
    ensure_peers(corral_venv, peers_venv)
    tools = Tools(corral_venv, peers_venv, wrk, shutil.which("caddy"))
    plan = Plan(1, 3, 64) if args.quick else Plan(3, 10, 64)
    results_dir: Path = args.results.resolve()
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("https-*.log"):
        old.unlink()
    bench = Bench(tools, plan, logs)
    info = machine(tools)
    command = " ".join([Path(sys.executable).name, "benchmarks/https.py", *(sys.argv[1:] if argv is None else argv)])

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="corral-https-cert-") as cert_dir:
        for server in servers:
            results[server] = bench.measure(server, Path(cert_dir))

    info["load_at_end"] = round(os.getloadavg()[0], 2)
    report = "\n\n".join([f"Command: `{command}`", render_machine(info), render(results, plan)])
    commands = "\n".join(f"- {key}: `{' '.join(argv)}`" for key, argv in bench.commands.items())
    print("\n" + report + "\n\nServer commands:\n" + commands)
    (results_dir / "https.md").write_text(report + "\n\n#### Server commands\n\n" + commands + "\n")
    payload = {"command": command, "machine": info, "plan": plan.__dict__, "results": results,
               "commands": bench.commands, "errors": bench.errors}  # fmt: skip
    (results_dir / "https.json").write_text(json.dumps(payload, indent=2) + "\n")
    for error in bench.errors:
        print(f"https.py: {error}", file=sys.stderr)
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
