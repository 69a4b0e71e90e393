"""Which setting of a method is ranked, and its value: shared by the run summary,
leaderboards, :func:`gmbench.stats.seed_values` and the compare gate.

**Selection rule** (honest selection): a method's ranked setting (sampler, NFE)
is the one with the best *mean over seeds of its validation value* (metric
entries with ``"split": "val"``); what is reported and ranked is the *test*
value at that setting (entries with ``"split": "test"`` or no split). Choosing
on the numbers being reported would reward noise — the best of a grid of noisy
test values is biased towards "good" — so the validation split pays for the
choice and the test split stays untouched by it. Old records carry no
validation entries: then the setting is chosen on test and
:attr:`Selection.note` says so.

Only settings measured on the most seeds are candidates (a sampler that failed
on some seeds must not win on the lucky rest); ties go to fewer NFE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

VAL, TEST = "val", "test"


def direction_of(reg, output_name: str) -> str:
    """'lower' or 'higher' for a metric output name, from the metric registry."""
    for mname in reg.metrics.names():
        for out in reg.metrics.get(mname).outputs:
            if out.name == output_name:
                return out.direction
    return "lower"


def split_of(entry: dict) -> str:
    """'val' or 'test' (records written before validation splits carry no split: test)."""
    return VAL if entry.get("split") == VAL else TEST


def usable(entry: dict) -> bool:
    """An entry with a finite value and no error."""
    v = entry.get("value")
    return v is not None and not entry.get("error") and isinstance(v, (int, float)) and math.isfinite(v)


def entry_at(record: dict, metric: str, sampler, nfe, split: str = TEST) -> dict | None:
    """The usable entry of ``metric`` at (sampler, NFE) in ``split`` of one record, or None."""
    for e in record.get("metrics") or []:
        if (e.get("name") == metric and e.get("sampler") == sampler and e.get("nfe") == nfe
                and split_of(e) == split and usable(e)):
            return e
    return None


def setting_values(records: list[dict], metric: str, split: str) -> dict[tuple, dict[int, float]]:
    """``{(sampler, nfe): {seed: value}}`` of ``metric`` in ``split`` over ``records`` (one method's seeds)."""
    out: dict[tuple, dict[int, float]] = {}
    for rec in records:
        for e in rec.get("metrics") or []:
            if e.get("name") == metric and split_of(e) == split and usable(e):
                out.setdefault((e.get("sampler"), e.get("nfe")), {})[int(rec["seed"])] = float(e["value"])
    return out


@dataclass(frozen=True)
class Selection:
    """The ranked setting of one method: chosen on ``chosen_on`` ('val' or 'test'), over ``n`` seeds."""

    sampler: str | None
    nfe: int | None
    chosen_on: str
    n: int

    @property
    def note(self) -> str:
        if self.sampler is None and self.nfe is None:
            return "— (a model metric: nothing to choose)"  # e.g. test bits/char: one value per run
        return "validation" if self.chosen_on == VAL else "test (no validation values)"


def select_setting(records: list[dict], metric: str, direction: str) -> Selection | None:
    """The setting of ``metric`` with the best mean validation value over ``records``' seeds.

    ``records`` are the runs of one method (one per seed). Candidates are the
    settings with a test value; a candidate's seeds are those with both a test
    and a selection value. Without any validation entry the test values select.
    None when no setting has a test value.
    """
    test = setting_values(records, metric, TEST)
    val = setting_values(records, metric, VAL)
    basis, on = (val, VAL) if val else (test, TEST)
    candidates = {}
    for key, tv in test.items():
        seeds = sorted(set(tv) & set(basis.get(key, {})))
        if seeds:
            candidates[key] = [basis[key][s] for s in seeds]
    if not candidates:
        return None
    most = max(len(v) for v in candidates.values())
    sign = 1.0 if direction == "lower" else -1.0
    best = min((k for k, v in candidates.items() if len(v) == most),
               key=lambda k: (sign * sum(candidates[k]) / most, k[1] or 0, str(k[0])))
    return Selection(best[0], best[1], on, most)


def selected_values(records: list[dict], metric: str, selection: Selection) -> dict[int, float]:
    """``{seed: test value}`` of ``metric`` at ``selection`` (seeds without a test value there are left out)."""
    return setting_values(records, metric, TEST).get((selection.sampler, selection.nfe), {})


def best_entry(record: dict, metric: str, direction: str) -> dict | None:
    """The *test* entry of ``metric`` at the setting chosen on this record's validation values
    (on its test values when it has none); see the module docstring."""
    sel = select_setting([record], metric, direction)
    return None if sel is None else entry_at(record, metric, sel.sampler, sel.nfe)


def primary_metric(reg, dataset: str) -> str:
    name = dataset.partition(":")[0]
    return reg.datasets.get(name).primary_metric if name in reg.datasets else ""
