"""Run inside a fresh network namespace (`unshare --net`) by test_admin_access: an admin listener on a
non-loopback address, reachable only inside the namespace, must demand the token (except the probes), and serves
only the probes when it has none.

Usage: python netns_admin.py TMPDIR. Exits 0 when every check passed; an assertion's message otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from harness import PLAIN_APP, Corral, run_cli, wait_for, write_app

ADDRESS = "10.77.0.1"  # on this namespace's own lo: not a loopback address, not reachable from outside
TOKEN = "s3cret-token-4f9a1c"


def main(tmp: Path) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{ADDRESS}/32", "dev", "lo"], check=True)
    write_app(tmp, PLAIN_APP % "served")
    admin_port = 19090

    bare = Corral(tmp, "app.py", "-w", "1", "--admin-bind", f"{ADDRESS}:{admin_port}", port=19080)
    try:
        bare.wait_ready(1)
        base = f"http://{ADDRESS}:{admin_port}"
        wait_for(lambda: httpx.get(base + "/livez").status_code == 200, what="the admin listener without a token")
        assert httpx.get(base + "/readyz").status_code == 200  # probes from other machines work
        for path in ("/api/status", "/metrics"):  # nothing else is served without a token
            assert httpx.get(base + path).status_code == 403, path
        assert httpx.post(base + "/api/scale", json={"to": "+1"}).status_code == 403
        assert "reachable from other machines and has no token" in bare.log
    finally:
        bare.stop()

    token_file = tmp / "admin.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    corral = Corral(tmp, "app.py", "-w", "1", "--admin-bind", f"{ADDRESS}:{admin_port}",
                    "--admin-token-file", str(token_file), port=19080)
    try:
        corral.wait_ready(1)
        base = f"http://{ADDRESS}:{admin_port}"
        wait_for(lambda: httpx.get(base + "/livez").status_code == 200, what="the admin listener")
        assert httpx.get(base + "/readyz").status_code == 200  # probes need no token
        page = httpx.get(base + "/dashboard")
        assert page.status_code == 200 and TOKEN not in page.text  # the page is static: no data, no secret

        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}):
            answer = httpx.get(base + "/api/status", headers=headers)
            assert answer.status_code == 401, (headers, answer.status_code)
            assert answer.headers["www-authenticate"].startswith("Bearer")
        good = {"authorization": f"Bearer {TOKEN}"}
        status = httpx.get(base + "/api/status", headers=good)
        assert status.status_code == 200 and status.json()["workers"][0]["state"] == "ready"
        events = httpx.get(base + "/api/events", headers=good)
        assert events.status_code == 200 and events.json()["events"]
        for text in (status.text, events.text):
            assert TOKEN not in text

        assert httpx.post(base + "/api/scale", json={"to": "+1"}).status_code == 401  # an action needs the token
        scaled = httpx.post(base + "/api/scale", json={"to": "+1"}, headers=good)
        assert scaled.status_code == 200 and scaled.json()["target"] == 2, scaled.text
        corral.wait_ready(2)
        shown = run_cli("status", "--json", "--control", str(corral.control))
        assert shown.returncode == 0 and TOKEN not in shown.stdout
        print(json.dumps({"ok": True, "admin": base}))
    finally:
        corral.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
