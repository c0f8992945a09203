"""The autoscaler's decisions, without processes: simulated loads against `policy.autoscale_decision`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from corral.manager import policy
from corral.manager.policy import GIB, MIB, AutoscaleLimits, LoadSample, MemoryFigures, ScaleDecision

LIMITS = AutoscaleLimits(minimum=1, maximum=8, low=0.5, high=0.9, cooldown=30.0, grow_after=2.0)
TICK = 0.5


@dataclass
class Run:
    sizes: list[tuple[float, int]]  # (time, pool size) after each decision
    changes: list[tuple[float, ScaleDecision]]
    last: ScaleDecision

    def size_at(self, moment: float) -> int:
        return [n for t, n in self.sizes if t <= moment][-1]


def simulate(
    demand: Callable[[float], float],
    duration: float,
    limits: AutoscaleLimits = LIMITS,
    cpu_per_unit: float = 0.1,
    cpus: float = 2.0,
    start: int = 1,
    memory: Callable[[int], MemoryFigures] | None = None,
) -> Run:
    """A pool whose load is `demand(t)` workers' worth of event-loop time; each unit of demand also uses
    `cpu_per_unit` CPUs. A worker saturated by the load, or starved of CPU, reads fully busy."""
    size, last_change, last_action = start, -1000.0, "hold"
    samples: list[LoadSample] = []
    sizes: list[tuple[float, int]] = []
    changes: list[tuple[float, ScaleDecision]] = []
    decision = ScaleDecision(size, "hold", "")
    now = 0.0
    while now <= duration:
        load = demand(now)
        cpu_wanted = load * cpu_per_unit
        busy = min(1.0, load / size) if cpu_wanted <= cpus else 1.0
        cpu = min(cpus, cpu_wanted, size * 1.0) / cpus
        samples.append(LoadSample(now, size, busy, 0, cpu, cpus))
        samples = [s for s in samples if s.at >= now - 120]
        decision = policy.autoscale_decision(
            samples, size, limits, now, last_change, last_action, memory(size) if memory else None
        )
        if decision.target != size:
            assert abs(decision.target - size) == 1, "one step at a time"
            changes.append((now, decision))
            size, last_change, last_action = decision.target, now, decision.action
        sizes.append((now, size))
        now += TICK
    return Run(sizes, changes, decision)


def test_steady_load_at_the_band_edge_settles_and_stays() -> None:
    # 1.8 workers' worth: 2 workers would be 90 % busy, the band's top: the pool settles at 3 (60 %).
    run = simulate(lambda t: 1.8, 600)
    assert [d.target for _, d in run.changes] == [2, 3]
    assert run.changes[-1][0] < 10
    assert run.size_at(600) == 3


def test_steady_load_just_under_the_bottom_does_not_flap() -> None:
    # 1.45 on 3 workers is 48 % busy, under the band; but 2 workers would be 73 %, above the band's middle, and
    # soon saturated by any wobble: keep 3.
    run = simulate(lambda t: 1.45, 600, start=3)
    assert run.changes == []
    assert run.last.action == "hold"
    # 1.95 on 4 workers (49 %): 3 workers would be 65 %, inside the band: one step in, then nothing more.
    run = simulate(lambda t: 1.95, 600, start=4)
    assert [d.target for _, d in run.changes] == [3]


def test_a_spike_scales_out_in_seconds_and_back_in_slowly() -> None:
    def spike(t: float) -> float:
        return 6.0 if 10 <= t < 70 else 0.05

    run = simulate(spike, 200)
    grown = [t for t, d in run.changes if d.action == "grow"]
    assert run.size_at(40) == 7  # 6 workers' worth: 7 workers are 86 % busy
    assert grown[0] - 10 <= 2.5, "the first step out comes within seconds of the spike"
    assert grown[-1] - 10 <= 20
    shrunk = [t for t, d in run.changes if d.action == "shrink"]
    assert shrunk[0] - 70 >= LIMITS.cooldown - 1, "no step in before the cool-down"
    assert shrunk[-1] - 70 <= 60, "back to the minimum within a minute of idle"
    assert run.size_at(200) == 1
    assert all(t > 70 for t in shrunk)


def test_a_slow_ramp_grows_step_by_step_without_stepping_back() -> None:
    def ramp(t: float) -> float:
        return min(6.0, t / 20)  # 0 → 6 workers' worth over 120 s, then a plateau

    run = simulate(ramp, 240)
    assert all(d.action == "grow" for _, d in run.changes)
    assert run.size_at(240) == 7
    for moment, size in run.sizes[::10]:
        wanted = ramp(moment)
        assert size >= wanted / LIMITS.high - 1, f"at {moment} s, {size} workers for a load of {wanted}"


def test_an_oscillating_load_does_not_make_the_pool_oscillate() -> None:
    def waves(t: float) -> float:
        return 3.0 if int(t / 5) % 2 else 1.0  # 5 s at 1 worker's worth, 5 s at 3, again and again

    run = simulate(waves, 600)
    assert all(d.action == "grow" for _, d in run.changes)
    assert len(run.changes) <= 3
    assert run.size_at(600) == run.size_at(60)


def test_cpu_bound_instance_holds_and_says_so() -> None:
    # Each worker's worth of load is one CPU's worth: on 2 CPUs, a third worker would only add contention.
    run = simulate(lambda t: 4.0, 120, cpu_per_unit=1.0)
    assert run.size_at(120) == 2
    assert run.last.cpu_bound
    assert run.last.reason == "CPU-bound at 100 % of 2 CPUs: add machines or CPUs"


def test_a_queue_of_waiting_connections_is_saturation() -> None:
    samples = [LoadSample(t / 2, 2, 0.3, 5, 0.2, 2.0) for t in range(10)]
    decision = policy.autoscale_decision(samples, 2, LIMITS, 4.5, -1000, "hold")
    assert decision.action == "grow"
    assert "connections waiting" in decision.reason


def test_a_single_busy_sample_is_not_enough() -> None:
    samples = [LoadSample(10.0, 1, 1.0, 0, 0.5, 2.0)]
    assert policy.autoscale_decision(samples, 1, LIMITS, 10.0, -1000, "hold").action == "hold"


def test_samples_before_the_last_change_do_not_count() -> None:
    samples = [LoadSample(t / 2, 1, 1.0, 0, 0.5, 2.0) for t in range(20)]
    decision = policy.autoscale_decision(samples, 2, LIMITS, 9.5, 9.0, "grow")
    assert decision.action == "hold"


def test_growth_refused_by_memory_holds_with_the_arithmetic() -> None:
    memory = MemoryFigures(private_per_worker=300 * MIB, shared=100 * MIB, available=int(1.3 * GIB))
    run = simulate(lambda t: 6.0, 60, memory=lambda n: memory)
    assert run.size_at(60) == 3  # 3 x 300 MiB + 100 MiB fits in 90 % of 1.3 GiB; 4 does not
    assert run.last.action == "hold"
    assert "4 workers × 300 MiB private + 100 MiB shared" in run.last.reason


def test_workers_outgrowing_memory_step_in() -> None:
    def figures(size: int) -> MemoryFigures:
        return MemoryFigures(private_per_worker=600 * MIB, shared=100 * MIB, available=2 * GIB)

    run = simulate(lambda t: 6.0, 10, start=4, memory=figures)
    assert [d.action for _, d in run.changes] == ["shrink", "shrink"]
    assert run.changes[0][1].reason.startswith("memory: 8 workers × 600 MiB private")
    assert run.size_at(10) == 2  # 2 x 600 MiB + 100 MiB fits in 90 % of 2 GiB; 3 do not
    assert "growth refused by memory: 3 workers × 600 MiB private + 100 MiB shared > 1.8 GiB" in run.last.reason


def test_memory_ceiling_clamps_the_maximum() -> None:
    memory = MemoryFigures(private_per_worker=300 * MIB, shared=100 * MIB, available=int(1.3 * GIB))
    ceiling, why = policy.memory_ceiling(LIMITS, memory)
    assert ceiling == 3
    assert why is not None and "using 3" in why
    assert policy.memory_ceiling(LIMITS, None) == (8, None)


def test_never_below_the_minimum_nor_above_the_maximum() -> None:
    limits = AutoscaleLimits(minimum=2, maximum=3, low=0.5, high=0.9, cooldown=10, grow_after=1)
    assert simulate(lambda t: 0.0, 300, limits, start=2).changes == []
    run = simulate(lambda t: 10.0, 60, limits, start=2)
    assert run.size_at(60) == 3
    assert "at the maximum of 3" in run.last.reason
    assert policy.autoscale_decision([], 1, limits, 0, 0, "hold").target == 2


def test_starting_size_and_parsing() -> None:
    limits = policy.parse_autoscale("2:6", "40:80", 30)
    assert (limits.minimum, limits.maximum, limits.low, limits.high) == (2, 6, 0.4, 0.8)
    assert limits.grow_after == 2.0
    assert policy.parse_autoscale("1:4", "50:90", 2).grow_after == 0.5
    assert policy.autoscale_start(None, limits) == 2
    assert policy.autoscale_start(12, limits) == 6
    assert policy.autoscale_start(1, limits) == 2
    assert policy.autoscale_start(4, limits) == 4


def test_workers_waiting_for_a_cpu_taken_by_other_work_hold_as_cpu_bound() -> None:
    # Busy workers, but the instance itself uses 10 % of the CPUs: the rest goes to other work on the machine.
    samples = [LoadSample(t / 2, 2, 1.0, 0, 0.1, 2.0, cpu_wait=0.6, machine_cpu=1.0) for t in range(10)]
    decision = policy.autoscale_decision(samples, 2, LIMITS, 4.5, -1000, "hold")
    assert decision.action == "hold" and decision.cpu_bound
    assert decision.reason.startswith("CPU-bound at 100 % of 2 CPUs: add machines or CPUs")
    # A blocked loop waits for no CPU: connections waiting in the queue still grow the pool on a busy machine.
    blocked = [LoadSample(t / 2, 2, 0.05, 4, 0.02, 2.0, cpu_wait=0.01, machine_cpu=1.0) for t in range(10)]
    assert policy.autoscale_decision(blocked, 2, LIMITS, 4.5, -1000, "hold").action == "grow"


def threadpool_load(at: float, workers: int, in_flight: int, machine_cpu: float) -> LoadSample:
    """`def` endpoints waiting 50 ms in AnyIO's threadpool (40 tokens a worker): the workers' utilisation is the
    pool's occupancy, little CPU is used, and the loops' threads wait for a CPU behind their own threads."""
    occupancy = min(1.0, in_flight / workers / 40)
    return LoadSample(at, workers, occupancy, 0, 0.15 * workers, 2.0, cpu_wait=0.3, machine_cpu=machine_cpu)


def test_a_full_threadpool_grows_the_pool_when_the_machine_has_cpu_to_spare() -> None:
    samples = [threadpool_load(t / 2, 1, 64, machine_cpu=0.6) for t in range(10)]
    decision = policy.autoscale_decision(samples, 1, LIMITS, 4.5, -1000, "hold")
    assert (decision.action, decision.target, decision.cpu_bound) == ("grow", 2, False)
    # Two workers share the 64 requests: 80 % of their tokens, inside the band, so the pool stays at two.
    two = [threadpool_load(5 + t / 2, 2, 64, machine_cpu=0.6) for t in range(10)]
    assert policy.autoscale_decision(two, 2, LIMITS, 9.5, 4.9, "grow").action == "hold"
    # The same wait for a CPU with the machine's CPUs taken by other work is CPU-bound.
    taken = [threadpool_load(t / 2, 1, 64, machine_cpu=0.97) for t in range(10)]
    held = policy.autoscale_decision(taken, 1, LIMITS, 4.5, -1000, "hold")
    assert held.action == "hold" and held.cpu_bound


def test_an_idle_threadpool_pool_shrinks_back_to_the_minimum() -> None:
    def demand(t: float) -> float:  # requests in flight: 120 for 20 s, then none
        return 120 if t < 20 else 0

    size, last_change, last_action = 1, -1000.0, "hold"
    samples: list[LoadSample] = []
    sizes: dict[float, int] = {}
    now = 0.0
    while now <= 120:
        samples.append(threadpool_load(now, size, int(demand(now)), machine_cpu=0.6))
        decision = policy.autoscale_decision(samples, size, LIMITS, now, last_change, last_action)
        if decision.target != size:
            size, last_change, last_action = decision.target, now, decision.action
        sizes[now] = size
        now += TICK
    assert max(sizes.values()) == 4  # 120 requests over 40 tokens a worker: 4 workers at 75 %
    assert sizes[19.5] == 4
    assert sizes[120] == 1
    assert next(t for t, n in sizes.items() if n == 1 and t > 20) <= 20 + 60  # idle: back to one within a minute


def test_one_saturated_worker_with_the_mean_past_the_middle_grows_the_pool() -> None:
    # Keep-alive clients spread unevenly (the newcomer's report): one worker's threadpool full, the other's at 57 %,
    # the mean inside the band. The others have little room left to take the busy worker's clients.
    samples = [LoadSample(t / 2, 2, 0.79, 0, 0.3, 2.0, busiest=1.0) for t in range(10)]
    decision = policy.autoscale_decision(samples, 2, LIMITS, 4.5, -1000, "hold")
    assert (decision.action, decision.target) == ("grow", 3)
    assert decision.reason.startswith("workers 79 % busy (band 50-90 %), the busiest 100 %, CPU")


def test_one_saturated_worker_beside_idle_ones_holds_while_its_clients_spread() -> None:
    # Right after a growth: the old worker still has every client, the newcomer none. Another worker would get
    # no client either; the busy worker lets some go instead (manager/balance.py).
    samples = [LoadSample(t / 2, 2, 0.5, 0, 0.3, 2.0, busiest=1.0) for t in range(10)]
    decision = policy.autoscale_decision(samples, 2, LIMITS, 4.5, -1000, "hold")
    assert (decision.action, decision.reason) == ("hold", "workers 50 % busy (band 50-90 %), the busiest 100 %")


def test_no_step_in_while_one_worker_is_saturated() -> None:
    # Four workers 25 % busy on average: three idle, one saturated by its keep-alive clients.
    one_busy = [LoadSample(t / 2, 4, 0.25, 0, 0.2, 2.0, busiest=1.0) for t in range(80)]
    assert policy.autoscale_decision(one_busy, 4, LIMITS, 39.5, -1000, "grow").action == "hold"
    evenly = [LoadSample(t / 2, 4, 0.25, 0, 0.2, 2.0, busiest=0.3) for t in range(80)]
    assert policy.autoscale_decision(evenly, 4, LIMITS, 39.5, -1000, "grow").action == "shrink"
