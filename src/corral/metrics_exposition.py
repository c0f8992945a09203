"""A short-lived helper process of the manager: fold dead workers' app metrics, render `/metrics`.

The manager never imports prometheus_client (it would add about 3 MiB to its PSS); for each scrape it starts
`python -m corral.metrics_exposition`, writes a JSON request on its stdin and reads the Prometheus text on its
stdout. The request holds Corral's own figures as plain families and the app's multiprocess directory.

Before reading the directory, the helper folds the files of every process that has died into one record per
type (`counter_folded.db`, ...): counters, histograms and summaries add up, so they never go backwards when a
worker is recycled, killed or replaced by a reload; `sum`, `max`, `min` and `mostrecent` gauges keep their
mode's meaning; other gauges of a dead process (`all`, `live*`) are dropped. Space stays bounded by the live
processes plus one record per type. The manager runs one helper at a time, so a scrape never sees a file
both folded and still present.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

FOLDED = "folded"
CLAIMED = ".folding"  # a dead process's file, renamed while it is folded
_ADD = {"counter", "histogram", "summary", "gauge_sum"}
_KEEP = {"gauge_max": max, "gauge_min": min}


def dead_files(directory: Path) -> dict[str, list[Path]]:
    """Files of processes no longer alive, by kind (`counter`, `gauge_sum`, ...), each claimed for the fold."""
    found: dict[str, list[Path]] = {}
    for path in directory.glob(f"*.db{CLAIMED}"):  # claimed by a fold that did not finish
        kind = path.name.removesuffix(f".db{CLAIMED}").rpartition("_")[0]
        if kind:
            found.setdefault(kind, []).append(path)
    for path in directory.glob("*.db"):
        kind, _, pid = path.stem.rpartition("_")
        if not pid.isdigit() or not kind or _alive(int(pid)):
            continue
        claimed = _claim(path, int(pid))
        if claimed is not None:
            found.setdefault(kind, []).append(claimed)
    return found


def _claim(path: Path, pid: int) -> Path | None:
    """Moves a dead process's file out of the way before the fold reads it. Pids are reused: a new process with
    the same pid opens its file by name, and one that opened this file between the check and the fold would add
    to a file the fold then removes. Once moved, a newcomer makes a file of its own; one already alive may hold
    this one, so it goes back (None), unless the newcomer has made its own meanwhile."""
    claimed = path.with_name(path.name + CLAIMED)
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return None
    if not _alive(pid):
        return claimed
    try:
        os.link(claimed, path)
    except FileExistsError:
        return claimed
    claimed.unlink()
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fold(directory: Path) -> int:
    """Fold the files of dead processes into the per-kind records; return how many files were folded."""
    from prometheus_client.mmap_dict import MmapedDict

    folded = 0
    for kind, paths in dead_files(directory).items():
        if kind in _ADD or kind in _KEEP or kind == "gauge_mostrecent":
            record = directory / f"{kind}_{FOLDED}.db"
            scratch = directory / f"{kind}_{FOLDED}.db.tmp"
            if record.exists():
                shutil.copyfile(record, scratch)
            else:
                scratch.unlink(missing_ok=True)
            target = MmapedDict(str(scratch))
            try:
                current = {key: (value, stamp) for key, value, stamp in target.read_all_values()}
                for path in paths:
                    for key, value, stamp, _ in MmapedDict.read_all_values_from_file(str(path)):
                        if key not in current:
                            current[key] = (value, stamp)
                        elif kind in _ADD:
                            current[key] = (current[key][0] + value, 0.0)
                        elif kind in _KEEP:
                            current[key] = (_KEEP[kind](current[key][0], value), 0.0)
                        elif stamp >= current[key][1]:
                            current[key] = (value, stamp)
                for key, (value, stamp) in current.items():
                    target.write_value(key, value, stamp)
            finally:
                target.close()
            os.replace(scratch, record)  # the record changes at once, then the folded files go
        for path in paths:
            path.unlink(missing_ok=True)
            folded += 1
    return folded


def render(request: dict[str, Any]) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.multiprocess import MultiProcessCollector

    class Corral:
        def collect(self) -> list[Metric]:
            metrics: list[Metric] = []
            for family in request["families"]:
                labels = list(family["labels"])
                metric: Metric
                if family["type"] == "counter":
                    metric = CounterMetricFamily(family["name"], family["help"], labels=labels)
                    for values, value in family["samples"]:
                        metric.add_metric(values, value)
                elif family["type"] == "histogram":
                    metric = HistogramMetricFamily(family["name"], family["help"], labels=labels)
                    for values, (buckets, total) in family["samples"]:
                        metric.add_metric(values, [(bound, count) for bound, count in buckets], total)
                else:
                    metric = GaugeMetricFamily(family["name"], family["help"], labels=labels)
                    for values, value in family["samples"]:
                        metric.add_metric(values, value)
                metrics.append(metric)
            return metrics

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Corral())
    directory = request.get("directory")
    if directory and os.path.isdir(directory):
        MultiProcessCollector(registry, directory)
    output: bytes = generate_latest(registry)
    return output


def main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    directory = request.get("directory")
    if directory:
        with contextlib.suppress(FileNotFoundError):
            fold(Path(directory))
    if request.get("render", True):
        sys.stdout.buffer.write(render(request))
    return 0


if __name__ == "__main__":
    sys.exit(main())
