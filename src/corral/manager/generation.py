"""A generation: one template process (one version of the code) and the channel to it."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from corral import channel
from corral.envfile import app_environment, check_exec_size
from corral.errors import ConfigError, CorralError, ExitCode
from corral.process import DUMP_STACKS, TREE_VAR, become_subreaper, kill_adopted
from corral.worker.spec import ENV_VAR, TemplateSpec

log = logging.getLogger("corral")

# Seconds between asking a process for its stacks and killing it: a loaded host may take a while to write them.
STACK_DUMP_WAIT = 3.0


class LaunchError(CorralError):
    """A template that could not be started: at start one line and its exit code, on reload a refusal."""

    exit_code = ExitCode.APP_FAILED_TO_START


class Phase(enum.Enum):
    LOADING = "loading"  # the template imports the app
    PROVING = "proving"  # its first worker is starting: the generation is not trusted yet
    CURRENT = "current"  # fills the slots
    RETIRING = "retiring"  # replaced: its workers drain, then the template exits
    FAILED = "failed"


@dataclass
class Generation:
    number: int
    process: subprocess.Popen[bytes]
    channel: socket.socket
    phase: Phase = Phase.LOADING
    boot_error: str | None = None
    boot_traceback: str = ""  # the full traceback of the failed start, printed once after the one-line cause
    exit_sent: bool = False
    started_at: float = field(default_factory=time.monotonic)
    kill_at: float | None = None  # set when its import overran --startup-timeout: killed after the stack dump
    reload_waiters: list[asyncio.Future[int]] = field(default_factory=list)

    @classmethod
    def start(cls, spec: TemplateSpec) -> Generation:
        """Start the template with the listening sockets, the scoreboard and its end of the channel.

        Raises LaunchError (one line) when it cannot: an environment over the kernel's limits, no file
        descriptor left, fork or exec failing. Nothing is left open then."""
        argv = [sys.executable, "-m", "corral.worker.template"]
        files = spec.settings.get("env_file") or []
        try:
            manager_end, template_end = channel.pair()
        except OSError as exc:
            raise LaunchError(f"cannot start a template process: {exc.strerror or exc}") from None
        try:
            spec.channel_fd = template_end.fileno()
            env = app_environment(files, os.environ)
            env[ENV_VAR] = spec.dumps()
            env[TREE_VAR] = str(spec.manager_pid)
            check_exec_size(argv, env, files)
            fds = [template_end.fileno(), spec.scoreboard_fd, *(listener.fd for listener in spec.listeners)]
            become_subreaper()  # a template that dies leaves the app's processes to us, not to init
            process = subprocess.Popen(
                argv,
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches only the manager, which drains the workers itself
            )
        except ConfigError as exc:
            manager_end.close()
            raise LaunchError(str(exc), ExitCode.USAGE) from None
        except (OSError, subprocess.SubprocessError) as exc:
            manager_end.close()
            cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LaunchError(f"cannot start a template process: {cause}") from None
        finally:
            template_end.close()
        manager_end.setblocking(False)
        _sessions.add(process.pid)
        return cls(spec.generation, process, manager_end)

    def send(self, message: dict[str, object]) -> None:
        with contextlib.suppress(OSError):  # the template is gone; its exit is noticed by polling the process
            channel.send(self.channel, message)

    def ask_to_exit(self) -> None:
        if not self.exit_sent:
            self.exit_sent = True
            self.send({"op": "exit"})

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def watch_import(self, now: float, startup_timeout: float) -> None:
        """A template whose import of the app overruns --startup-timeout logs its stack, then is killed: the
        generation fails (exit 3 at start, a refused reload later) instead of waiting forever."""
        if self.phase is not Phase.LOADING or not self.alive:
            return
        if self.kill_at is None and now - self.started_at > startup_timeout:
            self.boot_error = f"importing the app took longer than --startup-timeout {startup_timeout:g} s"
            log.error("generation %d: %s; stack of the template:", self.number, self.boot_error)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, DUMP_STACKS)
            self.kill_at = now + STACK_DUMP_WAIT
        elif self.kill_at is not None and now >= self.kill_at:
            self.kill()

    def log_traceback(self) -> None:
        """The full traceback of the failed start, once, after its one-line cause."""
        if self.boot_traceback:
            log.error("traceback of the failed start:\n%s", self.boot_traceback.rstrip())
            self.boot_traceback = ""


_sessions: set[int] = set()  # every template leads a session: its workers and their children are in it


def kill_orphans(generations: list[Generation]) -> int:
    """Kill the app's processes re-parented to the manager (a template died before its workers' children);
    they carry the tree marker, Corral's own children (pre-start steps) do not. Returns how many were alive."""
    return kill_adopted({g.process.pid for g in generations}, marker=os.getpid(), sessions=frozenset(_sessions))
