"""Paper claims as checks: an ordering, a tie or a trend that run records can confirm.

A plugin registers its paper's checkable claims through ``gmbench_register_claims``
(one :class:`PaperClaim` each; names are unique). ``gmbench claims RESULTS`` then
checks every registered claim on run records with :func:`gmbench.stats.paired_compare`
(paired t-test across seeds, runs paired by seed) and gives one verdict per dataset
and budget the claim's records cover:

* ``holds``: the records show the claim beyond seed noise (p < 0.05, two-sided);
* ``fails``: they show the opposite beyond seed noise;
* ``inconclusive``: not separable at 95%, or fewer than 2 seeds run by both sides;
* ``untested``: no records of the claim's cells (or records that cannot be compared).

A claim compares *cells*: a method label as the boards write it (``ddpm``,
``vae[iw_samples=64]``, see :func:`gmbench.leaderboard.method_label`), a sampler and
an NFE, on one metric output, on the datasets a pattern matches. Relations:

* ``better``: cell A beats cell B (the metric's registered direction says which way);
* ``tie``: A and B agree within ``tolerance`` (metric units): holds when the 95%
  interval of the mean paired difference lies inside ``[-tolerance, tolerance]``,
  fails when one side wins beyond seed noise and the difference exceeds the tolerance;
* ``improves``: cell A at ``nfes[1]`` beats cell A at ``nfes[0]`` (more steps, better);
* ``gap_closes``: A's advantage over B (per seed, in the good direction) is smaller at
  ``nfes[1]`` than at ``nfes[0]``.

Only ``ok`` records and test-split values (entries with ``"split": "test"`` or none) count.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

RELATIONS = ("better", "tie", "improves", "gap_closes")
SOURCES = ("paper", "observation")
VERDICTS = ("holds", "fails", "inconclusive", "untested")
CONFIDENCE = 0.95
TEST = "paired t-test across seeds (gmbench.stats.paired_compare)"
_ARXIV = re.compile(r"^\d{4}\.\d{4,5}$")


class ClaimError(ValueError):
    """A malformed claim; one-line message."""


@dataclass(frozen=True)
class Cell:
    """One cell of the results grid: a method label, a sampler and an NFE.

    ``sampler``/``nfe`` are None for model metrics (likelihood); for ``improves`` and
    ``gap_closes`` the NFE comes from the claim's ``nfes`` and must be None here.
    """

    method: str
    sampler: str | None = None
    nfe: int | None = None

    def at(self, nfe: int | None) -> "Cell":
        return Cell(self.method, self.sampler, nfe)

    def __str__(self) -> str:
        where = f" {self.sampler}" if self.sampler else ""
        return f"{self.method}{where}" + (f"@{self.nfe}" if self.nfe is not None else "")


@dataclass(frozen=True)
class PaperClaim:
    """A checkable claim of a paper (or, with ``source="observation"``, of this project).

    Args:
        name: unique id, e.g. ``"ddim-beats-ancestral-digits-fid-10"``.
        statement: one line a reader can check against the paper.
        relation: ``better``, ``tie``, ``improves`` or ``gap_closes`` (module doc).
        metric: a metric output name (``fid``, ``swd``, ``test_nll``...).
        dataset: a dataset name, an fnmatch pattern (``imagefolder:*``) or
            ``modality:toy2d`` (every dataset of that modality).
        a, b: the cells compared (``b`` unused by ``improves``).
        nfes: ``(low, high)`` for ``improves`` and ``gap_closes``.
        paper: arXiv id (``2010.02502``); may be empty for an observation.
        table: where in the paper (``"DDIM T1"``) or, for an observation, in the docs.
        tolerance: for ``tie``, the largest difference (metric units) still a tie.
        source: ``paper`` or ``observation`` (measured here, not claimed by a paper).
    """

    name: str
    statement: str
    relation: str
    metric: str
    dataset: str
    a: Cell
    b: Cell | None = None
    nfes: tuple[int, int] | None = None
    paper: str = ""
    table: str = ""
    tolerance: float | None = None
    source: str = "paper"

    def __post_init__(self):
        def bad(why: str):
            raise ClaimError(f"claim {self.name!r}: {why}")

        if not isinstance(self.name, str) or not self.name.strip():
            raise ClaimError("a claim needs a non-empty name")
        if self.relation not in RELATIONS:
            bad(f"unknown relation {self.relation!r}; use one of {', '.join(RELATIONS)}")
        if self.source not in SOURCES:
            bad(f"source must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.source == "paper" and not _ARXIV.match(self.paper or ""):
            bad(f"paper must be an arXiv id like 2010.02502, not {self.paper!r}")
        for what in ("statement", "metric", "dataset", "table"):
            if not str(getattr(self, what) or "").strip():
                bad(f"{what} is empty")
        if "\n" in self.statement:
            bad("statement must be one line")
        if not isinstance(self.a, Cell) or (self.b is not None and not isinstance(self.b, Cell)):
            bad("a and b must be gmbench.claims.Cell")
        if self.relation == "improves" and self.b is not None:
            bad("'improves' compares cell a with itself across nfes; give no b")
        if self.relation != "improves" and self.b is None:
            bad(f"'{self.relation}' needs a cell b")
        if self.relation in ("improves", "gap_closes"):
            if (not isinstance(self.nfes, tuple) or len(self.nfes) != 2
                    or not all(isinstance(n, int) and n > 0 for n in self.nfes) or self.nfes[0] >= self.nfes[1]):
                bad(f"'{self.relation}' needs nfes=(low, high), two positive integers with low < high, not {self.nfes!r}")
            if any(c is not None and c.nfe is not None for c in (self.a, self.b)):
                bad(f"'{self.relation}' takes its NFEs from nfes; leave the cells' nfe None")
        elif self.nfes is not None:
            bad(f"nfes is only for 'improves' and 'gap_closes', not '{self.relation}'")
        if self.relation == "tie":
            if self.tolerance is None or not (isinstance(self.tolerance, (int, float)) and self.tolerance > 0):
                bad(f"'tie' needs a tolerance > 0 in metric units, not {self.tolerance!r}")
        elif self.tolerance is not None:
            bad("tolerance is only for 'tie'")

    def matches(self, dataset: str, modality: str | None) -> bool:
        if self.dataset.startswith("modality:"):
            return modality == self.dataset.partition(":")[2]
        return fnmatch.fnmatchcase(dataset, self.dataset)

    @property
    def cite(self) -> str:
        return f"{self.paper} {self.table}".strip() if self.source == "paper" else f"observation: {self.table}"


@dataclass
class ClaimResult:
    """The verdict of one claim on one dataset and budget (``dataset``/``budget`` '-' when untested)."""

    claim: PaperClaim
    dataset: str
    budget: str
    verdict: str
    reason: str
    compared: str = ""
    direction: str | None = None
    seeds: list[int] = field(default_factory=list)
    values_a: list[float] = field(default_factory=list)
    values_b: list[float] = field(default_factory=list)
    mean_a: float | None = None
    mean_b: float | None = None
    diff: dict | None = None  # mean, low, high of A - B over paired seeds
    p_value: float | None = None

    def to_dict(self) -> dict:
        c = self.claim
        return {
            "claim": c.name, "statement": c.statement, "relation": c.relation, "metric": c.metric,
            "paper": c.paper, "table": c.table, "source": c.source,
            "dataset": self.dataset, "budget": self.budget, "verdict": self.verdict, "reason": self.reason,
            "compared": self.compared, "direction": self.direction, "seeds": self.seeds,
            "values_a": self.values_a, "values_b": self.values_b, "mean_a": self.mean_a, "mean_b": self.mean_b,
            "diff": self.diff, "p_value": self.p_value, "test": TEST, "confidence": CONFIDENCE,
        }


# -- reading records ---------------------------------------------------------------------


def _values(recs: list[dict], cell: Cell, metric: str) -> dict[int, float]:
    """``{seed: test-split value}`` of ``metric`` at ``cell`` in one dataset/budget group."""
    from gmbench.leaderboard import method_label

    out = {}
    for r in recs:
        if method_label(r) != cell.method:
            continue
        for e in r.get("metrics") or []:
            v = e.get("value")
            if (e.get("name") == metric and e.get("sampler") == cell.sampler and e.get("nfe") == cell.nfe
                    and e.get("split") in (None, "test") and v is not None and math.isfinite(v)):
                out[int(r["seed"])] = float(v)
    return out


def _groups(claim: PaperClaim, records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups = defaultdict(list)
    for r in records:
        if r.get("status") == "ok" and claim.matches(str(r["dataset"]), r.get("modality")):
            groups[(str(r["dataset"]), str(r["budget"]))].append(r)
    return groups


# -- checking ---------------------------------------------------------------------------


def check_claims(claims, records: list[dict], directions: dict[str, str]) -> list[ClaimResult]:
    """Every claim's verdicts on ``records`` (deduplicated, latest record per run)."""
    from gmbench.leaderboard import dedupe

    records, _ = dedupe(records)
    out = []
    for claim in claims:
        found = [check_group(claim, ds, budget, recs, directions.get(claim.metric))
                 for (ds, budget), recs in sorted(_groups(claim, records).items())]
        found = [r for r in found if r is not None]
        out.extend(found or [ClaimResult(claim, "-", "-", "untested", f"no records of {_cells(claim)} on {claim.dataset}")])
    return out


def _cells(claim: PaperClaim) -> str:
    cells = [claim.a] if claim.b is None else [claim.a, claim.b]
    if claim.nfes:
        cells = [c.at(n) for c in cells for n in claim.nfes]
    return " / ".join(f"{c} {claim.metric}" for c in cells)


def check_group(claim: PaperClaim, dataset: str, budget: str, recs: list[dict], direction: str | None) -> ClaimResult | None:
    """The verdict on one dataset/budget; None when no record there holds any of the claim's cells."""
    from gmbench.leaderboard import method_label
    from gmbench.stats import paired_compare

    if claim.relation in ("better", "tie"):
        cells = [claim.a, claim.b]
    elif claim.relation == "improves":
        cells = [claim.a.at(claim.nfes[1]), claim.a.at(claim.nfes[0])]
    else:
        cells = [c.at(n) for n in claim.nfes for c in (claim.a, claim.b)]  # a@lo, b@lo, a@hi, b@hi
    vals = [_values(recs, c, claim.metric) for c in cells]
    if not any(vals):
        return None
    res = ClaimResult(claim, dataset, budget, "untested", "", direction=direction)
    missing = [str(c) for c, v in zip(cells, vals) if not v]
    if missing:
        res.reason = f"no records of {', '.join(missing)} ({claim.metric})"
        return res
    if direction is None:
        res.reason = f"no registered metric has an output {claim.metric!r}: its direction is unknown"
        return res
    prints = {r.get("fingerprint") for r in recs if any(method_label(r) == c.method for c in cells)}
    if len(prints) > 1:
        res.reason = f"records with {len(prints)} different protocol fingerprints are not comparable"
        return res

    if claim.relation == "gap_closes":
        sign = 1.0 if direction == "lower" else -1.0  # lead > 0: A ahead of B

        def lead(va, vb):
            return {s: sign * (vb[s] - va[s]) for s in set(va) & set(vb)}

        a, b, cmp_dir = lead(vals[2], vals[3]), lead(vals[0], vals[1]), "lower"  # lead at high vs low NFE
        names = (f"lead at NFE {claim.nfes[1]}", f"lead at NFE {claim.nfes[0]}")
        res.compared = f"lead of {claim.a} over {claim.b} at NFE {claim.nfes[1]} vs {claim.nfes[0]}"
        says = ("the lead is smaller at the higher NFE", "the lead is larger at the higher NFE")
    else:
        a, b, cmp_dir = vals[0], vals[1], direction
        names = (str(cells[0]), str(cells[1]))
        res.compared = f"{cells[0]} vs {cells[1]}"
        says = (f"{cells[0]} is better", f"{cells[1]} is better")
    cmp = paired_compare(a, b, cmp_dir, confidence=CONFIDENCE, names=names)
    res.seeds = list(cmp.seeds)
    res.values_a = [a[s] for s in cmp.seeds]
    res.values_b = [b[s] for s in cmp.seeds]
    res.mean_a = None if not cmp.seeds else cmp.mean_a
    res.mean_b = None if not cmp.seeds else cmp.mean_b
    res.p_value = cmp.p_value
    if cmp.diff is not None:
        res.diff = {"mean": cmp.diff.mean, "low": cmp.diff.low, "high": cmp.diff.high}
    if cmp.diff is None:
        res.verdict, res.reason = "inconclusive", f"{len(cmp.seeds)} seed(s) run by both sides; need at least 2"
    elif claim.relation == "tie":
        tol = claim.tolerance
        if -tol <= cmp.diff.low and cmp.diff.high <= tol:
            res.verdict, res.reason = "holds", f"95% interval of A - B inside ±{tol:g}"
        elif cmp.better is not None and abs(cmp.diff.mean) > tol:
            res.verdict, res.reason = "fails", f"{says[cmp.better == 'b']} beyond seed noise and by more than {tol:g}"
        else:
            res.verdict, res.reason = "inconclusive", f"95% interval of A - B not inside ±{tol:g}"
    elif cmp.better is None:
        res.verdict, res.reason = "inconclusive", "not separable from seed noise at 95%"
    else:
        res.verdict = "holds" if cmp.better == "a" else "fails"
        res.reason = says[cmp.better == "b"] + " beyond seed noise"
    return res


# -- reporting --------------------------------------------------------------------------


def summary(results: list[ClaimResult]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in results) for v in VERDICTS}


def _num(x) -> str:
    return "" if x is None else f"{x:.4g}"


def render_markdown(results: list[ClaimResult]) -> str:
    """A github-flavoured table, one row per verdict, then the statements."""
    from tabulate import tabulate

    from gmbench.leaderboard import md_escape

    rows = []
    for r in results:
        d = r.diff
        diff = "" if d is None else f"{d['mean']:+.4g} [{d['low']:+.4g}, {d['high']:+.4g}]"
        rows.append([
            f"**{r.verdict}**", md_escape(r.claim.name), md_escape(r.dataset), md_escape(r.budget),
            md_escape(r.claim.metric), md_escape(r.compared), f"{_num(r.mean_a)} vs {_num(r.mean_b)}" if r.seeds else "",
            diff, _num(r.p_value), ", ".join(map(str, r.seeds)), md_escape(r.reason),
        ])
    headers = ["verdict", "claim", "dataset", "budget", "metric", "compared (A vs B)", "means (A vs B)",
               "A - B (95% CI)", "p", "seeds", "why"]
    counts = summary(results)
    head = ", ".join(f"{v} {n}" for v, n in counts.items())
    seen, notes = set(), []
    for r in results:
        if r.claim.name not in seen:
            seen.add(r.claim.name)
            notes.append(f"- `{r.claim.name}` ({md_escape(r.claim.cite)}): {md_escape(r.claim.statement)}")
    return "\n".join([
        "# Paper claims", "", f"{head}. Test: {TEST}, {CONFIDENCE:.0%} two-sided; test-split values of ok runs.", "",
        tabulate(rows, headers=headers, tablefmt="github"), "", "## Claims", "", *notes, "",
    ])
