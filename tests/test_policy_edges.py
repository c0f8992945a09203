"""Edges the mutation run found untested (policy, paths, redact): each assertion here failed on a mutant that
the other unit tests let through."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.manager import policy
from corral.paths import check_private_dir
from corral.redact import has_password, redact_arguments, redact_values
from corral.text import format_bytes

MIB, GIB = policy.MIB, policy.GIB


def test_start_despite_backoff_with_one_waiting_slot() -> None:
    assert policy.start_despite_backoff(0, 1)  # the only slot waits and nothing serves: start it now
    assert not policy.start_despite_backoff(1, 1)
    assert not policy.start_despite_backoff(0, 0)


def test_parse_scale_edges() -> None:
    assert policy.parse_scale("1", 4) == 1  # one worker is allowed
    assert policy.parse_scale("-3", 4) == 1
    assert policy.parse_scale(" +2 ", 4) == 6
    for text in ("-4", "0", "X2", "+", "2x", "--1"):
        with pytest.raises(ValueError):
            policy.parse_scale(text, 4)


def test_parse_range_edges() -> None:
    assert policy.parse_range(" 2 : 8 ", "MIN:MAX") == (2, 8)
    for text in ("1:2:3", "a:8", "2:b", "28", ":"):
        with pytest.raises(ValueError) as refused:
            policy.parse_range(text, "MIN:MAX")
        assert str(refused.value) == f"expected MIN:MAX, got {text!r}"
    with pytest.raises(ValueError, match="expected LOW:HIGH, got '50'"):
        policy.parse_autoscale("1:4", "50", 30.0)
    with pytest.raises(ValueError, match="expected MIN:MAX, got '4'"):
        policy.parse_autoscale("4", "50:90", 30.0)


def test_plan_memory_explicit_refusal_and_per_worker_division() -> None:
    refused = policy.plan_memory(4, True, 100 * MIB, 50 * MIB, 300 * MIB)
    assert refused.fits is False and refused.workers == 4 and "> 270 MiB available" in refused.explanation
    # auto: (budget - shared) // private; a private size of 1 byte must not be read as 2
    lowered = policy.plan_memory(10**9, False, 1, 0, 1000, margin=0.0)
    assert lowered.workers == 1000 and lowered.fits


def test_memory_ceiling_when_the_maximum_just_fits() -> None:
    limits = policy.AutoscaleLimits(1, 4, 0.5, 0.9)
    exactly = policy.MemoryFigures(private_per_worker=100 * MIB, shared=0, available=400 * MIB)  # 360 budget: 3
    assert policy.memory_ceiling(limits, exactly)[0] == 3
    roomy = policy.MemoryFigures(private_per_worker=90 * MIB, shared=0, available=400 * MIB)  # 4 x 90 = 360
    assert policy.memory_ceiling(limits, roomy) == (4, None)


def test_format_bytes_boundaries() -> None:
    assert format_bytes(MIB) == "1 MiB"
    assert format_bytes(MIB - 1) == "1024 KiB"
    assert format_bytes(GIB) == "1.0 GiB"


def test_a_secret_option_given_with_equals_is_masked_whole() -> None:
    assert redact_arguments(["--admin-token=tok=en"]) == ["--admin-token=***"]


def test_redact_values_and_has_password() -> None:
    shown = redact_values({
        "admin_token": "t0k", "prestart_lock": "postgresql://u:pw@h/d", "env_file": ["a.env", "redis://:pw@r/0"],
        "workers": 3, "name": "api",
    })  # fmt: skip
    assert shown == {
        "admin_token": "***", "prestart_lock": "postgresql://u:***@h/d", "env_file": ["a.env", "redis://:***@r/0"],
        "workers": 3, "name": "api",
    }  # fmt: skip
    assert redact_values({"admin_token": None}) == {"admin_token": None}  # nothing to hide
    assert has_password("postgresql://u:pw@h/d") and not has_password("postgresql://u@h/d")
    assert not has_password("postgresql://u:@h/d") and not has_password("no url")


def test_runtime_dir_refusals_say_why(tmp_path: Path) -> None:
    file = tmp_path / "runtime"
    file.write_text("")
    with pytest.raises(ConfigError) as refused:
        check_private_dir(file, create=False)
    assert str(refused.value) == (f"refusing the runtime directory {file}: it is not a directory; remove it, or give "
                                  "--control PATH")
    under_a_file = file / "corral"
    with pytest.raises(ConfigError) as refused:
        check_private_dir(under_a_file, create=True)
    assert str(refused.value) == f"cannot create the runtime directory {under_a_file}: Not a directory"


def test_parse_scale_says_what_it_expects() -> None:
    with pytest.raises(ValueError) as refused:
        policy.parse_scale("X2", 4)
    assert str(refused.value) == "expected N, +K or -K, got 'X2'"


def test_parse_autoscale_keeps_the_cooldown_and_paces_growth_from_it() -> None:
    assert policy.parse_autoscale("1:4", "50:90", 30.0) == policy.AutoscaleLimits(1, 4, 0.5, 0.9, 30.0, 2.0)
    assert policy.parse_autoscale("1:4", "50:90", 4.0).grow_after == 1.0
    assert policy.parse_autoscale("1:4", "50:90", 1.0).grow_after == 0.5


def test_utilisation_of_nothing_and_the_cpu_phrase() -> None:
    assert policy.utilisation([]) == 0.0
    assert policy.cpu_phrase(0.5, 1) == "50 % of 1 CPU"
    assert policy.cpu_phrase(0.25, 2) == "25 % of 2 CPUs"


def test_prepare_control_path_in_process(tmp_path: Path) -> None:
    import socket

    from corral.errors import CorralError
    from corral.paths import prepare_control_path

    precious = tmp_path / "precious.sock"
    precious.write_text("keep me")
    with pytest.raises(ConfigError) as refused:
        prepare_control_path(precious, default=False)
    assert str(refused.value) == f"--control {precious}: exists and is not a socket; corral never replaces other files"
    assert precious.read_text() == "keep me"
    under_a_file = precious / "c.sock"
    with pytest.raises(ConfigError) as refused:
        prepare_control_path(under_a_file, default=False)
    assert str(refused.value) == (
        f"--control {under_a_file}: its directory {precious}: it exists and is not a directory; refusing it"
    )
    nested = tmp_path / "a" / "b" / "c.sock"
    prepare_control_path(nested, default=False)  # its directory is made, 0700
    assert nested.parent.is_dir() and (nested.parent.stat().st_mode & 0o777) == 0o700
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(stale))  # bound, never listening: what a killed instance leaves
    prepare_control_path(stale, default=False)
    assert not stale.exists()
    live = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(live))
        listener.listen()
        with pytest.raises(CorralError) as taken:
            prepare_control_path(live, default=False)
        assert str(taken.value) == (f"another corral instance is running with control socket {live} (use --name or "
                                    "--control)")
    private = tmp_path / "runtime" / "corral.sock"
    prepare_control_path(private, default=True)
    assert (private.parent.stat().st_mode & 0o777) == 0o700
