"""A real pebble ACME server (Debian's `pebble` package) on loopback, for the HTTPS tests.

pebble-challtestsrv runs only as pebble's DNS server (every name resolves to 127.0.0.1, its own
challenge servers are off), so pebble validates challenges against the Corral under test on the
`http_port`/`tls_port` given here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import trustme

from harness import free_port

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"


@dataclass
class Pebble:
    directory_url: str
    listener_ca: Path  # trusts pebble's own HTTPS listener: what --acme-ca-bundle gets
    issuing_root: Path  # pebble's issuing root (changes at every start): verifies issued certificates
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_ready(url: str, verify: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"pebble exited with status {process.returncode}")
        try:
            if httpx.get(url, verify=ssl.create_default_context(cafile=verify), timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("pebble did not answer in time")
        time.sleep(0.1)


@contextlib.contextmanager
def pebble_server(
    directory: Path,
    http_port: int,
    tls_port: int,
    validity_seconds: int | None = None,
    nonce_reject_percent: int | None = None,
) -> Iterator[Pebble]:
    """Start challtestsrv (DNS) and pebble; stop both on exit. `nonce_reject_percent=None` keeps pebble's
    default (5 % of nonces rejected)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = directory / "pebble-cert.pem", directory / "pebble-key.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert_path))
    server_cert.private_key_pem.write_to_path(str(key_path))
    listener_ca = directory / "pebble-listener-ca.pem"
    ca.cert_pem.write_to_path(str(listener_ca))

    dns_port, dns_management, acme_port, management_port = (free_port() for _ in range(4))
    config: dict[str, object] = {
        "listenAddress": f"127.0.0.1:{acme_port}",
        "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(cert_path),
        "privateKey": str(key_path),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if validity_seconds is not None:
        config["certificateValidityPeriod"] = validity_seconds
    config_path = directory / "pebble-config.json"
    config_path.write_text(json.dumps({"pebble": config}))

    log = directory / "pebble.log"
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1"}
    if nonce_reject_percent is not None:
        env["PEBBLE_WFE_NONCEREJECT"] = str(nonce_reject_percent)
    with open(log, "ab") as out:
        dns = subprocess.Popen(
            [
                CHALLTESTSRV,
                "-defaultIPv4", "127.0.0.1",
                "-defaultIPv6", "",
                "-http01", "",
                "-https01", "",
                "-tlsalpn01", "",
                "-dns01", f"127.0.0.1:{dns_port}",
                "-management", f"127.0.0.1:{dns_management}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        server = subprocess.Popen(
            [PEBBLE, "-config", str(config_path), "-dnsserver", f"127.0.0.1:{dns_port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        directory_url = f"https://127.0.0.1:{acme_port}/dir"
        _wait_ready(directory_url, str(listener_ca), server)
        root = httpx.get(
            f"https://127.0.0.1:{management_port}/roots/0",
            verify=ssl.create_default_context(cafile=str(listener_ca)),
            timeout=10,
        )
        root.raise_for_status()
        issuing_root = directory / "pebble-root.pem"
        issuing_root.write_bytes(root.content)
        yield Pebble(directory_url, listener_ca, issuing_root, log)
    finally:
        for process in (server, dns):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
