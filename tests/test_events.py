"""The manager's event log: what the supervisor and the certificate service record, and `corral events`."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import math
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import httpx
import trustme

from corral.control_client import request
from corral.errors import CorralError
from corral.manager.events import FINAL, EventLog, Stall, read_stall, stalled_frame, top_frame, wait_channel
from corral.worker.stall import StallRecorder
from harness import Corral, corral_command, run_cli, wait_for, write_app

APP = """
    import asyncio, os, time

    def block_forever():
        time.sleep(3600)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await asyncio.sleep(float(os.environ.get("SHUTDOWN_SECONDS", "0")))
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/crash":
            os._exit(3)
        if scope["path"] == "/block":
            block_forever()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""


def events(corral: Corral, *args: str) -> list[dict[str, Any]]:
    result = run_cli("events", "--json", "--control", str(corral.control), *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def kinds(corral: Corral, kind: str) -> list[dict[str, Any]]:
    """Straight from the control socket (what `corral events` asks), without a CLI start per poll."""
    answer = request(corral.control, {"cmd": "events", "since": 0, "limit": 500})
    return [event for event in answer["events"] if event["kind"] == kind]


def test_event_log_is_bounded_and_reads_after_a_sequence() -> None:
    log = EventLog(capacity=3)
    for number in range(5):
        log.record("scale", f"event {number}", n=number)
    assert [e.fields["n"] for e in log.since(0)] == [2, 3, 4]  # the oldest were dropped
    assert [e.seq for e in log.since(3)] == [4, 5]
    assert [e.seq for e in log.since(0, limit=1)] == [5]
    assert log.since(5) == [] and log.since(0, limit=0) == []
    assert log.last_seq == 5
    assert log.since(0)[-1].to_json()["n"] == 4


def test_a_follower_gets_each_event_once_and_ends_with_the_final_one() -> None:
    async def scenario() -> list[dict[str, Any]]:
        log = EventLog(capacity=3)
        for number in range(5):
            log.record("scale", f"old {number}")
        answers: list[dict[str, Any]] = []

        async def follow() -> None:
            async for answer in log.follow({"since": 0, "limit": 2}):
                answers.append(answer)

        task = asyncio.create_task(follow())
        await asyncio.sleep(0)  # the follower has its first answer and waits
        log.record("start", "new 1")
        log.record("start", "new 2")  # before the follower runs again: one batch
        await asyncio.sleep(0)
        log.record(FINAL, "stopped after 1.0 s, exit code 0", code=0)
        await asyncio.wait_for(task, 5)
        return answers

    answers = asyncio.run(scenario())
    assert [[event["message"] for event in answer["events"]] for answer in answers] == [
        ["old 3", "old 4"], ["new 1", "new 2"], ["stopped after 1.0 s, exit code 0"]]
    assert [answer.get("end") for answer in answers] == [None, None, True]
    assert [answer["last_seq"] for answer in answers] == [5, 7, 8]


def test_wait_channel_names_where_a_sleeping_process_waits() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        where = wait_for(lambda: wait_channel(sleeper.pid), what="a wait channel")
        assert "sleep" in where or "wait" in where or "nanosleep" in where
    finally:
        sleeper.kill()
        sleeper.wait()
    assert wait_channel(None) is None
    assert wait_channel(2**22 + 12345) is None  # no such process


def ready(corral: Corral, count: int) -> list[int]:
    """pids of `count` ready workers, polling the control socket (the CLI's start is slow on a busy machine)."""

    def check() -> list[int] | None:
        assert corral.process.poll() is None, corral.log
        try:
            workers = request(corral.control, {"cmd": "status"})["workers"]
        except CorralError:  # not listening yet
            return None
        pids = sorted(w["pid"] for w in workers if w["state"] == "ready")
        return pids if len(pids) == count == len(workers) else None

    pids: list[int] = wait_for(check, what=f"{count} ready workers")
    return pids


def test_the_top_frame_is_the_main_threads_in_the_latest_dump() -> None:
    dump = textwrap.dedent("""\
        main thread 0x7f00000000aa
        Timeout (0:00:01.600000)!
        Thread 0x00007f00000000aa (most recent call first):
          File "/srv/app.py", line 3 in old_wait
        Timeout (0:00:01.600000)!
        Thread 0x00007f00000000bb (most recent call first):
          File "/usr/lib/python3.11/threading.py", line 320 in wait
        Thread 0x00007f00000000aa (most recent call first):
          File "/srv/app.py", line 9 in block_forever
          File "/srv/app.py", line 20 in app
    """)
    assert top_frame(dump) == "/srv/app.py:9 in block_forever"
    assert top_frame(dump.replace("0x00007f00000000aa", "0x00007f00000000cc")) is None  # no main thread
    assert top_frame(dump.partition("\n")[2]) is None  # no main thread id first
    assert top_frame("main thread 0xaa\n") is None  # nothing dumped yet


def test_a_stuck_request_thread_is_told_from_the_loop() -> None:
    """A WSGI worker records the thread stuck in a request under its own first line: the manager words the hang
    as a request thread stuck, not as its event loop."""
    recorder = StallRecorder(30)
    try:
        recorder.record_thread(0xAB, [("/srv/app.py", 5, "stuck_here"), ("/srv/app.py", 9, "app")])
        stall = read_stall(os.getpid())
        assert stall == Stall("/srv/app.py:5 in stuck_here", True)
        recorder.held = False
        recorder.arm()  # the header of the loop's watchdog, nothing dumped yet: not known
        assert read_stall(os.getpid()) == Stall(None, None)
    finally:
        faulthandler.cancel_dump_traceback_later()
        if recorder.file is not None:
            recorder.file.close()


def test_the_stall_file_holds_the_stall_in_progress_only() -> None:
    """The watchdog writes the stacks of a loop that missed its heartbeats; the next arm (a heartbeat) empties
    the file, so an old stall is never reported for a later fault."""
    recorder = StallRecorder(0.5)
    try:
        recorder.arm()  # this thread now waits in wait_for, as a stuck loop would
        frame = wait_for(lambda: stalled_frame(os.getpid()), 30, "the watchdog's stacks")
        assert frame.endswith(" in wait_for") and "harness.py:" in frame, frame
        recorder.armed_at = -math.inf
        recorder.arm()
        assert stalled_frame(os.getpid()) is None
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_start_recycle_crash_and_hang(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "2", "--max-requests", "20", "--timeout", "2")
    corrals.append(corral)
    pids = ready(corral, 2)
    started = [event for event in events(corral) if event["kind"] == "start"]  # as `corral events` prints them
    assert sorted(e["pid"] for e in started) == pids and all(e["generation"] == 1 for e in started)

    with httpx.Client(headers={"connection": "close"}) as client:  # new connections spread over the workers
        for _ in range(60):
            client.get(corral.url)
    recycled = wait_for(lambda: kinds(corral, "recycle"), what="a recycle event")[0]
    assert "requests" in recycled["cause"] and recycled["pid"] in pids
    wait_for(lambda: [e for e in kinds(corral, "exit") if e["pid"] == recycled["pid"]],
             what="the recycled worker's exit")

    ready(corral, 2)
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(corral.url + "/crash", timeout=5)
    crash = wait_for(lambda: kinds(corral, "crash"), what="a crash event")[0]
    assert "exited with code 3" in crash["message"] and crash["worker"] in (1, 2)

    ready(corral, 2)
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(corral.url + "/block", timeout=0.5)
    hang = wait_for(lambda: kinds(corral, "hang"), what="a hang event")[0]
    assert "event loop hung" in hang["message"]
    assert "sleep" in hang["waiting_in"]  # where the kernel has it wait: time.sleep, hrtimer_nanosleep
    assert hang["frame"] == f"{tmp_path / 'app.py'}:5 in block_forever", hang  # where the app has it wait
    assert hang["message"].endswith(" at app.py:5 in block_forever"), hang
    # its death after the stack dump is a crash caused by the hang
    end = wait_for(lambda: [e for e in kinds(corral, "crash") if e["pid"] == hang["pid"]], what="the hung one's end")
    assert "hung" in end[0]["cause"]


def test_scale_reload_refusal_stop_and_follow(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", env={"SHUTDOWN_SECONDS": "1.5"})
    corrals.append(corral)
    ready(corral, 1)
    follower = subprocess.Popen(corral_command("events", "--follow", "--json", "--limit", "1",
                                               "--control", str(corral.control)),
                                stdout=subprocess.PIPE, text=True)
    assert follower.stdout is not None
    first = json.loads(follower.stdout.readline())  # the latest event: the follower polls from here on
    try:
        assert request(corral.control, {"cmd": "scale", "to": "+1"})["ok"]
        scale = wait_for(lambda: kinds(corral, "scale"), what="a scale event")[0]
        assert (scale["previous"], scale["target"]) == (1, 2)
        ready(corral, 2)

        assert request(corral.control, {"cmd": "reload"}, timeout=60)["ok"]
        reloads = kinds(corral, "reload")
        assert [e["message"].split(":")[0] for e in reloads] == ["reload started", "reload finished"]
        write_app(tmp_path, "raise RuntimeError('broken release')")
        assert not request(corral.control, {"cmd": "reload"}, timeout=60)["ok"]
        last = kinds(corral, "reload")[-1]
        assert last["outcome"] == "refused" and "broken release" in last["cause"]

        assert request(corral.control, {"cmd": "stop"})["ok"]
        assert corral.wait_exit() == 0
        follower.wait(30)
    finally:
        if follower.poll() is None:
            follower.kill()
    followed = [first] + [json.loads(line) for line in follower.stdout.read().splitlines()]
    seqs = [e["seq"] for e in followed]
    assert seqs == sorted(set(seqs)) and seqs[0] == 1  # in order, each once, from the latest one on
    assert {"scale", "start", "reload", "exit", "stop"} <= {e["kind"] for e in followed}
    # the instance stopped as asked: the follower prints its final event and ends with exit code 0
    assert followed[-1]["kind"] == "stopped" and followed[-1]["code"] == 0
    assert followed[-1]["message"].startswith("stopped after ")
    assert follower.returncode == 0


def test_certificate_reload_is_an_event(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    ca = trustme.CA()
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"

    def write_pair() -> None:
        leaf = ca.issue_cert("api.example.com")
        for path, data in ((keyfile, leaf.private_key_pem.bytes()),
                           (certfile, b"".join(pem.bytes() for pem in leaf.cert_chain_pems))):
            path.with_suffix(".new").write_bytes(data)
            path.with_suffix(".new").replace(path)

    write_pair()
    corral = Corral(tmp_path, "app.py", "-w", "1", "--https", "api.example.com", "--certfile", str(certfile),
                    "--keyfile", str(keyfile), "--state-dir", str(tmp_path / "state"))
    corrals.append(corral)
    ready(corral, 1)
    write_pair()
    event = wait_for(lambda: kinds(corral, "certificate"), what="a certificate event")[0]
    assert event["outcome"] == "reloaded" and event["names"] == ["api.example.com"]
    certfile.write_bytes(b"not a certificate")
    refused = wait_for(lambda: [e for e in kinds(corral, "certificate") if e["outcome"] == "refused"],
                       what="the refusal event")
    assert "api.example.com" in refused[0]["names"]


def test_events_bad_input_and_no_instance(tmp_path: Path) -> None:
    result = run_cli("events", "--limit", "0", "--control", str(tmp_path / "c.sock"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr == "corral: --limit must be from 1 to 500 events, got 0\n", result.stderr
    result = run_cli("events", "--control", str(tmp_path / "none.sock"))
    assert result.returncode == 7 and "no corral instance" in result.stderr
    assert "Traceback" not in result.stderr
