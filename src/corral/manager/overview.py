"""The pool as a whole, beside `corral status`'s per-worker rows: CPU against the quota, memory against the budget.

`corral top` and the dashboard show these totals; the figures come from the rows already measured (the
templates' resident memory is the shared part), plus the memory still available.
"""

from __future__ import annotations

from typing import Any

from corral.manager import resources

MARGIN = 0.1  # kept back from the memory budget, as policy.plan_memory does


def pool_totals(status: dict[str, Any]) -> dict[str, Any]:
    workers = status.get("workers", [])
    cpu_quota = resources.cgroup_cpu_quota() or float(resources.cpu_count())
    private = sum(w.get("memory_uss") or 0 for w in workers)
    shared = sum(template.get("memory_rss") or 0 for template in status.get("templates", []))  # measured already
    used = private + shared
    return {
        "cpu_quota": cpu_quota,  # CPUs this instance may use (the cgroup's quota, else the CPUs it may run on)
        "cpu_percent": sum(w.get("cpu_percent") or 0.0 for w in workers),  # 100 = one CPU
        "memory_private": private,
        "memory_shared": shared,
        "memory_used": used,
        "memory_budget": int((resources.memory_available() + used) * (1 - MARGIN)),
        "requests": sum(w.get("requests") or 0 for w in workers),
        "workers_ready": sum(1 for w in workers if w.get("state") == "ready"),
    }
