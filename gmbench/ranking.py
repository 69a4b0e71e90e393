"""Best value of each run's ranking metric, shared by the run summary,
leaderboards and the compare gate."""

from __future__ import annotations

import math


def direction_of(reg, output_name: str) -> str:
    """'lower' or 'higher' for a metric output name, from the metric registry."""
    for mname in reg.metrics.names():
        for out in reg.metrics.get(mname).outputs:
            if out.name == output_name:
                return out.direction
    return "lower"


def best_entry(record: dict, metric: str, direction: str) -> dict | None:
    """The entry of ``metric`` with the best value over samplers and NFEs."""
    entries = [
        e for e in record.get("metrics", [])
        if e.get("name") == metric and e.get("value") is not None and math.isfinite(e["value"])
    ]
    if not entries:
        return None
    pick = min if direction == "lower" else max
    return pick(entries, key=lambda e: (e["value"], e.get("nfe") or 0))


def primary_metric(reg, dataset: str) -> str:
    name = dataset.partition(":")[0]
    return reg.datasets.get(name).primary_metric if name in reg.datasets else ""
