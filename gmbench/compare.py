"""The regression gate: compare a current set of run records with a baseline.

Runs are matched by (method with its hyper-parameters, dataset, budget, seed);
within a run, values by (metric output, sampler, NFE). A value *regresses*
when it moved in the bad direction (from the metric registry) by more than its
tolerance. A tolerance is the most lenient of its parts::

    abs:0.05           the value may get worse by 0.05
    rel:0.1            ... by 10% of the baseline value
    sd:2               ... by 2 standard deviations of that value over the
                       baseline's seeds (needs >= 2 seeds in the baseline)
    rel:0.05+abs:0.01  combined: worse by at most max(5%, 0.01)

The default, ``rel:0.05+abs:0.01``, is sized for the smoke budget in CI, from
measurements (DDPM and VAE, 8gaussians, smoke, CPU): on one machine a run is
bit-for-bit reproducible; on another CPU code path (``ATEN_CPU_CAPABILITY=default``
and MKL limited to AVX2 instead of AVX-512) sample metrics moved by at most
4e-5 relative, but DDPM's stochastic test-NLL estimate by 1.25%; across seeds
the same values spread by 0.5-2% (likelihoods) to 10-40% (sliced Wasserstein).
So 5% passes platform noise and catches changes well inside seed noise; the
absolute floor keeps values near zero (the share of off-support samples,
0.002 -> 0.004) from failing on noise. Cost numbers (seconds, samples/s) are
never gated: wall time is not reproducible across machines.

The gate fails on any regression, on a run that failed or is incomplete
(training stopped at its wall-clock cap: its numbers are not those of the
budget), on a run or value that disappeared; it never fails on an improvement,
a fixed run or a new run. With ``shared_only`` (``--shared-only``) only the runs both
sets contain are compared, and the others are counted, not failed: for a
current set that is a deliberate subset (or superset) of the baseline. Only test values are gated (entries with
``"split": "val"`` exist to choose settings; see gmbench.ranking).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from tabulate import tabulate

from gmbench.leaderboard import dedupe, differing_fields, md_escape, one_line, run_key, values_frame
from gmbench.records import RecordError
from gmbench.registry import did_you_mean

DEFAULT_TOLERANCE = "rel:0.05+abs:0.01"
FAILING = ("regressed", "failed", "missing", "missing value")


class CompareError(RecordError):
    """Inputs the gate cannot judge (bad tolerance, mixed protocols); one line."""


@dataclass(frozen=True)
class Tolerance:
    """How far a value may move in the bad direction: the max of its parts."""

    abs: float = 0.0
    rel: float = 0.0
    sd: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Tolerance":
        parts: dict[str, float] = {}
        for part in str(text).replace(" ", "").split("+"):
            kind, _, num = part.partition(":")
            if kind not in ("abs", "rel", "sd") or not num:
                raise CompareError(f"bad tolerance {text!r}: use abs:X, rel:X or sd:K, joined by '+' (e.g. rel:0.05+abs:0.01)")
            try:
                value = float(num)
            except ValueError:
                raise CompareError(f"bad tolerance {text!r}: {num!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise CompareError(f"bad tolerance {text!r}: {kind} must be a finite number >= 0")
            parts[kind] = value
        return cls(**parts)

    def __str__(self) -> str:
        return "+".join(f"{k}:{v:g}" for k, v in (("rel", self.rel), ("abs", self.abs), ("sd", self.sd)) if v) or "abs:0"

    def allowed(self, baseline: float, seed_sd: float | None) -> float | None:
        """The allowed worsening, or None when only ``sd`` is set and the SD is unknown."""
        options = [self.abs, self.rel * abs(baseline)]
        if self.sd:
            if seed_sd is None or math.isnan(seed_sd):
                if not (self.abs or self.rel):
                    return None
            else:
                options.append(self.sd * seed_sd)
        return max(options)


def parse_tolerances(items) -> dict[str, Tolerance]:
    """``["fid=rel:0.1", "swd=abs:0.05"]`` -> {metric output: Tolerance}."""
    out = {}
    for item in items:
        name, sep, spec = str(item).partition("=")
        if not sep or not name.strip():
            raise CompareError(f"bad --tol {item!r}: use METRIC=SPEC, e.g. fid=rel:0.1")
        out[name.strip()] = Tolerance.parse(spec)
    return out


@dataclass
class Row:
    """One line of the comparison: a run-level or a value-level verdict."""

    method: str
    dataset: str
    budget: str
    seed: int
    verdict: str
    metric: str = ""
    sampler: str | None = None
    nfe: int | None = None
    baseline: float | None = None
    current: float | None = None
    allowed: float | None = None
    tolerance: str = ""
    direction: str = ""
    note: str = ""

    @property
    def failing(self) -> bool:
        return self.verdict in FAILING


@dataclass
class Comparison:
    rows: list[Row] = field(default_factory=list)
    #: runs judged: in both sets, plus (without shared_only) those only in one, each a run-level row
    runs: int = 0
    #: runs in both sets: the only ones whose values are compared
    shared: int = 0
    #: with shared_only: runs left out because one set lacks them, by which set has them
    not_shared: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(r.failing for r in self.rows)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.verdict] = out.get(r.verdict, 0) + 1
        return dict(sorted(out.items()))


def compare_records(
    baseline: list[dict],
    current: list[dict],
    directions: dict[str, str],
    tolerances: dict[str, Tolerance] | None = None,
    default: Tolerance | str = DEFAULT_TOLERANCE,
    allow_mixed: bool = False,
    shared_only: bool = False,
) -> Comparison:
    """Judge ``current`` against ``baseline`` (lists of records); with ``shared_only``, only the
    runs both contain (the others are counted in ``Comparison.not_shared``)."""
    tolerances = tolerances or {}
    default = Tolerance.parse(default) if isinstance(default, str) else default
    base = {run_key(r): r for r in dedupe(baseline)[0]}
    cur = {run_key(r): r for r in dedupe(current)[0]}
    known = set(directions) | set(values_frame(baseline + current)["name"])
    for name in tolerances:
        if name not in known:
            raise CompareError(f"--tol names unknown metric {name!r}.{did_you_mean(name, known)}")
    _check_fingerprints(base, cur, allow_mixed)
    seed_sd = _seed_sds(baseline)

    keys = set(base) | set(cur)
    out = Comparison(shared=len(set(base) & set(cur)))
    if shared_only:
        keys = set(base) & set(cur)
        out.not_shared = {"baseline": len(set(base) - keys), "current": len(set(cur) - keys)}
    out.runs = len(keys)
    for key in sorted(keys):
        b, c = base.get(key), cur.get(key)
        head = dict(zip(("method", "dataset", "budget", "seed"), key))
        if c is None:
            out.rows.append(Row(**head, verdict="missing", note="run is in the baseline but not in the current results"))
        elif c["status"] != "ok":
            out.rows.append(Row(**head, verdict="failed", note=not_ok_note(c)))
        elif b is None:
            out.rows.append(Row(**head, verdict="new", note="run is not in the baseline"))
        elif b["status"] != "ok":
            out.rows.append(Row(**head, verdict="fixed", note=f"{b['status']} in the baseline: {not_ok_note(b)}"))
        else:
            out.rows += _compare_values(head, b, c, directions, tolerances, default, seed_sd)
    return out


def not_ok_note(rec: dict) -> str:
    """Why a run is not ok, in one line: its error, or how much of its budget an incomplete run spent."""
    if rec["status"] == "incomplete":
        spent = rec.get("budget_spent")
        share = f"{float(spent):.0%} of" if isinstance(spent, (int, float)) else "part of"
        return f"incomplete: training stopped at its wall-clock cap after {share} its budget"
    return one_line(rec.get("error"))


def _values(rec: dict) -> tuple[dict, dict]:
    """(test values, errors) of a record by (name, sampler, nfe)."""
    from gmbench.ranking import split_of

    values, errors = {}, {}
    for e in rec.get("metrics") or []:
        if split_of(e) != "test":
            continue
        k = (str(e.get("name")), e.get("sampler"), e.get("nfe"))
        v = e.get("value")
        if v is not None and not e.get("error") and math.isfinite(v):
            values[k] = float(v)
        elif e.get("error"):
            errors[(e.get("sampler"), e.get("nfe"))] = e["error"]
            errors[k] = e["error"]
    return values, errors


def _compare_values(head, b, c, directions, tolerances, default, seed_sd) -> list[Row]:
    bv, _ = _values(b)
    cv, cerr = _values(c)
    rows = []
    for k in sorted(set(bv) | set(cv), key=lambda k: (k[0], str(k[1]), k[2] or 0)):
        name, sampler, nfe = k
        common = dict(head, metric=name, sampler=sampler, nfe=nfe, baseline=bv.get(k), current=cv.get(k))
        if k not in cv:
            why = cerr.get(k) or cerr.get((sampler, nfe)) or "no value in the current record"
            rows.append(Row(**common, verdict="missing value", note=one_line(why)))
            continue
        if k not in bv:
            rows.append(Row(**common, verdict="new", note="value is not in the baseline"))
            continue
        if name not in directions:
            raise CompareError(f"metric {name!r} is not registered by any installed plugin, so its direction is unknown; "
                               "install the plugin that provides it")
        direction = directions[name]
        tol = tolerances.get(name, default)
        sd = seed_sd.get((head["method"], head["dataset"], head["budget"], name, sampler, nfe))
        allowed = tol.allowed(bv[k], sd)
        if allowed is None:
            raise CompareError(f"tolerance {tol} for {name!r} needs at least 2 seeds of {head['method']} on "
                               f"{head['dataset']}/{head['budget']} in the baseline; add seeds or an abs/rel part")
        worse = (cv[k] - bv[k]) if direction == "lower" else (bv[k] - cv[k])
        # a change equal to the tolerance is within it (floating-point slack: 0 -> 0.01 against
        # abs:0.01 must read ok, not regressed by a last-digit rounding)
        slack = allowed * (1 + 1e-9) + 1e-12
        verdict = "regressed" if worse > slack else "improved" if -worse > slack else "ok"
        rows.append(Row(**common, verdict=verdict, allowed=allowed, tolerance=str(tol), direction=direction))
    return rows


def _seed_sds(records: list[dict]) -> dict[tuple, float]:
    v = values_frame(dedupe(records)[0])
    v = v[v.split == "test"]
    if v.empty:
        return {}
    keys = ["method", "dataset", "budget", "name", "sampler", "nfe"]
    sds = v.groupby(keys, dropna=False)["value"].std(ddof=1)
    return {tuple(None if isinstance(x, float) and math.isnan(x) else x for x in k): float(s) for k, s in sds.items()}


def _check_fingerprints(base: dict, cur: dict, allow_mixed: bool) -> None:
    if allow_mixed:
        return
    clashes = [(k, base[k], cur[k]) for k in sorted(set(base) & set(cur))
               if base[k].get("fingerprint") and cur[k].get("fingerprint")
               and base[k]["fingerprint"] != cur[k]["fingerprint"]]
    if clashes:
        k, b, c = clashes[0]
        fields = ", ".join(differing_fields([b, c])) or "unrecorded fields"
        raise CompareError(
            f"baseline and current were measured under different protocols for {len(clashes)} run(s), e.g. "
            f"{k[0]} on {k[1]}/{k[2]} seed {k[3]}: fingerprint {b['fingerprint']} vs {c['fingerprint']} "
            f"(differing in {fields}); regenerate the baseline or pass --allow-mixed"
        )


# -- rendering -------------------------------------------------------------------------------


def _num(x) -> str:
    return "" if x is None else f"{x:.4g}"


def _change(r: Row) -> str:
    if r.baseline is None or r.current is None:
        return ""
    d = r.current - r.baseline
    rel = f" ({d / abs(r.baseline):+.1%})" if r.baseline else ""
    return f"{d:+.3g}{rel}"


def render(cmp: Comparison, fmt: str = "text", show_all: bool = False) -> str:
    """The comparison as a text table, a markdown table (escaped) or JSON."""
    if fmt == "json":
        return json.dumps({"failed": cmp.failed, "counts": cmp.counts(), "runs": cmp.runs, "shared": cmp.shared,
                           "not_shared": cmp.not_shared,
                           "rows": [asdict(r) for r in cmp.rows]}, indent=2, sort_keys=True)
    esc = md_escape if fmt == "markdown" else (lambda s: " ".join(str(s).splitlines()))
    shown = [r for r in cmp.rows if show_all or r.verdict != "ok"]
    table = [[
        r.verdict.upper() if r.failing else r.verdict,
        esc(f"{r.method} · {r.dataset} · {r.budget} · seed {r.seed}"),
        esc(r.metric) + (f" ({r.direction})" if r.direction else ""),
        esc(f"{r.sampler}@{r.nfe}") if r.sampler is not None else "",
        _num(r.baseline), _num(r.current), _change(r),
        f"±{r.allowed:.3g} ({r.tolerance})" if r.allowed is not None else "",
        esc(r.note),
    ] for r in shown]
    headers = ["verdict", "run", "metric", "sampler@nfe", "baseline", "current", "change", "tolerance", "note"]
    summary = summary_line(cmp)
    if not table:
        return summary
    body = tabulate(table, headers=headers, tablefmt="github" if fmt == "markdown" else "simple", disable_numparse=True)
    return f"{body}\n\n{summary}"


def summary_line(cmp: Comparison) -> str:
    """``PASS: 2 run(s) in both sets; values: 8 ok, 1 improved; runs: 1 missing``: the verdicts of
    metric values and of whole runs (missing, new, failed, fixed) counted apart."""
    def tally(rows) -> str:
        out: dict[str, int] = {}
        for r in rows:
            out[r.verdict] = out.get(r.verdict, 0) + 1
        return ", ".join(f"{n} {v}" for v, n in sorted(out.items()))

    values = tally(r for r in cmp.rows if r.metric)
    runs = tally(r for r in cmp.rows if not r.metric)
    verdict = "FAIL" if cmp.failed else "PASS"
    parts = [f"{verdict}: {cmp.shared} run(s) in both sets", f"values: {values or 'none compared'}"]
    if runs:
        parts.append(f"runs: {runs}")
    left = sum(cmp.not_shared.values())
    if left:
        parts.append(f"{left} run(s) not in both sets, not compared ({cmp.not_shared.get('baseline', 0)} only in the "
                     f"baseline, {cmp.not_shared.get('current', 0)} only in the current results)")
    return "; ".join(parts)
