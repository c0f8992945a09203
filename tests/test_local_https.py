"""Local HTTPS as a newcomer meets it (issue 13, items 1-4 and 9): every URL of the banner verifies with
the CA that `corral trust` prints, `corral trust` finds the CA in use and never creates one, and a chosen
ACME directory (pebble here) certifies a reserved name."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from corral.tls.plan import certificate_plans, describe_choice
from harness import OK_APP, Corral, corral_command, free_port, options_from, wait_for, write_app
from pebble import pebble_server
from tls_helpers import served_certificate, tls_connect

APP = OK_APP


def banner_value(log: str, key: str) -> str:
    """The text after `key:` in the banner."""
    match = re.search(rf"^  {key}:\s+(.+)$", log, re.MULTILINE)
    assert match, f"no {key!r} line in the banner:\n{log}"
    return match.group(1).strip()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=30)


def test_every_banner_url_verifies_with_the_ca_corral_trust_prints(tmp_path: Path) -> None:
    """Item 1, 3, 9: the local certificate covers 127.0.0.1, ::1 and a specific bound address (127.0.0.2);
    the banner's `corral trust` and curl commands work as printed; the admin URLs answer; the last log
    line says the instance stopped, after how long, with which exit code."""
    write_app(tmp_path, APP)
    state = tmp_path / "state"
    ports = [free_port() for _ in range(3)]
    admin_port = free_port()
    server = Corral(
        tmp_path, "app:app", "-w", "1", "--https", "localhost", "--state-dir", str(state),
        "-b", f"[::1]:{ports[1]}", "-b", f"127.0.0.2:{ports[2]}", "--admin-bind", f"127.0.0.1:{admin_port}",
        port=ports[0],
    )  # fmt: skip
    try:
        wait_for(lambda: "  try:" in server.log, what="the banner")
        log = server.log
        urls = banner_value(log, "listening").split()
        assert urls == [f"https://127.0.0.1:{ports[0]}", f"https://[::1]:{ports[1]}", f"https://127.0.0.2:{ports[2]}"]

        trust = banner_value(log, "trust")
        assert trust == f"corral trust --state-dir {state}"
        printed = subprocess.run(
            corral_command(*shlex.split(trust)[1:]), capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert printed.returncode == 0, printed.stderr
        root = Path(re.search(r"Local CA root certificate: (\S+)", printed.stdout).group(1))  # type: ignore[union-attr]
        assert root == state / "ca" / "root.pem"

        command = shlex.split(banner_value(log, "try"))
        assert command[:3] == ["curl", "--cacert", str(root)]
        assert command[3] == urls[0] + "/"
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stdout == "ok", result.stderr
        for url in urls:
            answer = curl("--cacert", str(root), url + "/")
            assert answer.returncode == 0 and answer.stdout == "ok", (url, answer.stderr)
            verified = httpx.get(url + "/", verify=ssl.create_default_context(cafile=str(root)), timeout=10)
            assert verified.text == "ok"
        # Without the CA: the error a newcomer sees (docs/troubleshooting.md).
        untrusted = curl(urls[0] + "/")
        assert untrusted.returncode == 60 and "unable to get local issuer certificate" in untrusted.stderr

        admin = banner_value(log, "admin").split()
        assert admin[:2] == [f"http://127.0.0.1:{admin_port}/livez", f"http://127.0.0.1:{admin_port}/readyz"]
        for url in admin:
            assert httpx.get(url, timeout=10).status_code == 200, url
        assert "https: localhost: local CA (a reserved name, and no --acme-directory was given)" in log
        assert "also covers 127.0.0.1, ::1, 127.0.0.2 (listening addresses)" in log

        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        last = server.log.strip().splitlines()[-1]
        assert re.search(r"\[corral\] INFO stopped after \d+\.\d s, exit code 0$", last), last
    finally:
        server.stop()


def test_plain_http_banner_has_a_curl_that_works(tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    server = Corral(tmp_path, "app:app", "-w", "1")
    try:
        wait_for(lambda: "  try:" in server.log, what="the banner")
        command = shlex.split(banner_value(server.log, "try"))
        assert command == ["curl", f"http://127.0.0.1:{server.port}/"]
        assert subprocess.run(command, capture_output=True, text=True, timeout=30).stdout == "ok"
        assert "  admin:" not in server.log and "  trust:" not in server.log
    finally:
        server.stop()


# corral trust: finds the CA in use, never creates one ------------------------------------------------


class Namespace:
    """A private mount namespace with empty /run/corral and /var/lib/corral: the default control sockets
    and state directories of root, for this test alone. Commands run in it through nsenter."""

    def __init__(self) -> None:
        for directory in ("/run/corral", "/var/lib/corral"):
            os.makedirs(directory, exist_ok=True)
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "300"])
        wait_for(lambda: os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"),
                 what="the mount namespace")
        for directory in ("/run/corral", "/var/lib/corral"):
            subprocess.run([*self.prefix(), "mount", "-t", "tmpfs", "-o", "mode=0700", "corral-test", directory],
                           check=True)

    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--"]

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.prefix() + corral_command(*args), capture_output=True, text=True,
                              timeout=60, cwd=cwd)

    def start(self, tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                self.prefix() + corral_command(
                    "run", "app:app", "--app-dir", str(tmp_path), "-w", "1", "--https", "localhost",
                    "--name", name, "-b", f"127.0.0.1:{free_port()}",
                ),
                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for(lambda: "  try:" in log.read_text() or process.poll() is not None, what=f"{name}'s banner")
        assert process.poll() is None, log.read_text()
        return process, log

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(10)


@contextlib.contextmanager
def namespace() -> Iterator[Namespace]:
    space = Namespace()
    try:
        yield space
    finally:
        space.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    process.wait(60)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a private mount namespace hides the machine's instances")
def test_trust_finds_the_ca_in_use_and_never_creates_one(tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    with namespace() as space:
        nothing = space.run("trust", cwd=tmp_path)
        assert nothing.returncode == 1
        assert nothing.stderr.startswith("corral: no local CA found")
        assert "corral run --https localhost" in nothing.stderr
        empty = space.run("trust", "--state-dir", str(tmp_path / "empty"))
        assert empty.returncode == 1 and f"no local CA in {tmp_path / 'empty'}" in empty.stderr, empty.stderr
        assert not (tmp_path / "empty").exists()
        listing = subprocess.run([*space.prefix(), "ls", "-A", "/var/lib/corral"], capture_output=True, text=True)
        assert listing.stdout == ""  # nothing created

        alpha, alpha_log = space.start(tmp_path, "alpha")
        try:
            only = space.run("trust", cwd=tmp_path)
            assert only.returncode == 0, only.stderr
            assert "Local CA root certificate: /var/lib/corral/alpha/ca/root.pem" in only.stdout
            curl_line = banner_value(alpha_log.read_text(), "try")
            verified = subprocess.run(space.prefix() + shlex.split(curl_line), capture_output=True, text=True,
                                      timeout=30)
            assert verified.returncode == 0 and verified.stdout == "ok", verified.stderr
            assert banner_value(alpha_log.read_text(), "trust") == "corral trust --name alpha"

            beta, _ = space.start(tmp_path, "beta")
            both = space.run("trust", cwd=tmp_path)
            assert both.returncode == 2
            assert "2 local CAs: alpha (/var/lib/corral/alpha, running); beta (/var/lib/corral/beta, running)" in (
                both.stderr
            )
            stop(beta)  # beta's CA stays on disk: the one running instance's CA is the one to trust
            running = space.run("trust", cwd=tmp_path)
            assert "Local CA root certificate: /var/lib/corral/alpha/ca/root.pem" in running.stdout
            stop(alpha)
            several = space.run("trust", cwd=tmp_path)  # none running, two on disk: choose
            assert several.returncode == 2
            assert "2 local CAs: alpha (/var/lib/corral/alpha); beta (/var/lib/corral/beta)" in several.stderr
            assert "choose one with --name" in several.stderr
            chosen = space.run("trust", "--name", "beta", cwd=tmp_path)
            assert "Local CA root certificate: /var/lib/corral/beta/ca/root.pem" in chosen.stdout
            missing = space.run("trust", "--name", "gamma", cwd=tmp_path)
            assert missing.returncode == 1 and "no local CA for --name gamma" in missing.stderr
        finally:
            stop(alpha)


# an explicit --acme-directory certifies reserved names -------------------------------------------------


def test_plans_route_names_by_the_directory_choice() -> None:
    default = options_from({"https": ["api.example.test", "localhost", "shop.example.com"]})
    assert [(p.label, p.names) for p in certificate_plans(default)] == [
        ("acme", ("shop.example.com",)),
        ("local", ("api.example.test", "localhost", "127.0.0.1", "::1")),
    ]
    chosen = options_from({"https": ["api.example.test", "db.internal", "myhost", "localhost", "10.0.0.5"],
                           "acme_directory": "https://ca.internal/acme/directory", "bind": ["10.0.0.5:8443"]})
    assert [(p.label, p.names) for p in certificate_plans(chosen)] == [
        ("acme", ("api.example.test", "db.internal", "myhost")),
        ("local", ("localhost", "10.0.0.5", "127.0.0.1", "::1")),
    ]
    assert describe_choice(chosen) == [
        "https: api.example.test: ACME directory https://ca.internal/acme/directory",
        "https: db.internal: ACME directory https://ca.internal/acme/directory",
        "https: myhost: ACME directory https://ca.internal/acme/directory",
        "https: localhost: local CA (IP addresses and localhost never go to an ACME directory)",
        "https: 10.0.0.5: local CA (IP addresses and localhost never go to an ACME directory)",
        "https: the local CA certificate also covers 127.0.0.1, ::1 (listening addresses)",
    ]


def test_a_given_acme_directory_certifies_a_test_name(tmp_path: Path) -> None:
    """Item 4 with a private ACME CA (pebble): `.test` goes to it; localhost stays with the local CA."""
    name = "api.corral-example.test"
    write_app(tmp_path, APP)
    https_port, http_port = free_port(), free_port()
    with pebble_server(tmp_path / "pebble", http_port, https_port, nonce_reject_percent=0) as pebble:
        server = Corral(
            tmp_path, "app:app", "-w", "1", "--https", name, "--https", "localhost",
            "--state-dir", str(tmp_path / "state"), "--acme-directory", pebble.directory_url,
            "--acme-ca-bundle", str(pebble.listener_ca), "--http-bind", f"127.0.0.1:{http_port}",
            port=https_port,
        )  # fmt: skip
        try:

            def issued() -> x509.Certificate | None:
                try:
                    with tls_connect(https_port, name, cafile=pebble.issuing_root) as sock:
                        der = sock.getpeercert(binary_form=True)
                except (OSError, ssl.SSLError):
                    return None
                return x509.load_der_x509_certificate(der) if der else None

            cert = wait_for(issued, 150, "pebble's certificate for a .test name")
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.DNSName) == [name]
            log = server.log
            assert f"https: {name}: ACME directory {pebble.directory_url}" in log
            assert "https: localhost: local CA (IP addresses and localhost never go to an ACME directory)" in log
            local = served_certificate(https_port, "localhost")
            assert "Corral local CA" in local.issuer.rfc4514_string()
        finally:
            server.stop()



def test_banner_lists_the_admin_pages_that_are_served() -> None:
    """/metrics and /dashboard appear in the banner once the admin listener serves them."""
    from corral.manager.banner import ADMIN_PATHS, _served_path

    routes = ["/livez", "/readyz", "/metrics", "/dashboard/", "/api/status"]
    assert [_served_path(path, routes) for path in ADMIN_PATHS] == ["/livez", "/readyz", "/metrics", "/dashboard/"]
    assert [_served_path(path, ["/livez", "/readyz"]) for path in ADMIN_PATHS] == ["/livez", "/readyz", None, None]
