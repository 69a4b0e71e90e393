"""Quality against training compute on the boards: the records' curves as pages, plots and crossovers.

Each run's record carries its curve (:mod:`gmbench.curve`): the dataset's primary
metric at fixed fractions of its training allowance and at the end of training, on
a cheap protocol. This module turns the curves of one dataset's records into one
page, ``<dataset>__curves.md``, linked from that dataset's boards: per method the
mean ± 95% t-interval over seeds (:func:`gmbench.stats.summarize`) at each training
FLOPs point, a log-x plot, and the **crossovers** — where, between two consecutive
compute points, the order of two methods by the mean changes.

**What must match for points to share a curve** (the *curve protocol*):

* the dataset and its definition — the record's fingerprint fields less those the
  budget sets (``budget``, ``train_flops``, ``batch_size``, ``model_size``,
  ``eval_samples``, ``nfe_grid``) and the other metrics' fields;
* the metric the points measure, and the version and settings of the metric that
  produces it (its entry in the fingerprint's ``metrics``);
* the curve protocol's version (``gmbench.curve.CURVE_VERSION``) and the number of
  samples (or test examples) per point.

Those define a *curve group*: one table, one plot, crossovers only within it. Records
of several budgets of one dataset whose protocol matches are joined in one group; the
budget-set fields may differ because a joined curve answers "what does each budget
buy": its points come from runs of different model sizes, and the page says so.
Within a group a method is one row per **sampler setting** (sampler and NFE): each
budget samples its curve at the middle of its own NFE grid, and points at different
settings are kept in separate rows, never joined into one line. Groups that cannot be
joined stay separate, and the page says which protocol field keeps them apart.

**Curve fractions.** The records of one (dataset, budget) must have taken their curves
at the same fractions: otherwise two methods' points are not at the same compute (a
budget preset changed between runs). That is refused with one line, like mixed
fingerprints, unless ``--allow-mixed``; the page then says so. Records of *different*
budgets may use different fractions: their points are simply at their own FLOPs.
Records without a curve (written before runs took one, or at a budget such as
``smoke`` that takes none) add nothing; a dataset none of whose records has a curve
gets no page and its boards no curve section.

**Crossovers.** For two methods' rows, take the compute points both have a value at,
in order; where the sign of the difference of means flips between consecutive ones,
the method better at the later point *overtakes* the other. A crossover is stated as
beyond seed noise only when the two 95% intervals separate (do not overlap) at both
points — a conservative check, since non-overlap of two 95% intervals is stricter than
a 95% test of the difference; otherwise it is listed as *within seed noise*, with the
point where the intervals overlap (or have too few seeds for an interval). Equal means
are no order, so they start or end no crossover.

Everything is a pure function of the records (rows and columns sorted, plots without
timestamps), so regenerating changes no byte.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import combinations
from pathlib import Path

from tabulate import tabulate

from gmbench.leaderboard import (REFERENCE, UNSTATED, LeaderboardError, backbone_family, fmt_ci, footer, md_escape,
                                 backbone_note, method_label, metric_directions, one_line, page_slug,
                                 t_interval)

#: fingerprint fields the budget sets: they may differ between budgets joined on one curve
BUDGET_FIELDS = ("budget", "train_flops", "batch_size", "model_size", "eval_samples", "nfe_grid")
#: not compared through the data fields: the metrics (only the curve metric's producer is) and the
#: precision (it is in the method label, ``ddpm[bf16]``, so it is a separate row anyway)
NOT_DATA_FIELDS = ("metrics", "precision")
#: how each part of the curve protocol is named when it keeps two groups apart
PROTOCOL_PARTS = {
    "data": "the dataset definition",
    "metric": "the metric",
    "metric_fields": "the metric's version or settings",
    "curve_version": "the curve protocol version",
    "samples": "samples per point",
}


def flops_text(x: float) -> str:
    """``1.25e11``: three significant digits, no ``+`` in the exponent."""
    return format(float(x), ".3g").replace("e+0", "e").replace("e+", "e")


def fraction_text(f: float) -> str:
    """``1/8``, ``1/2``, ``1``."""
    return str(Fraction(float(f)).limit_denominator(1024))


@dataclass(frozen=True, order=True)
class Column:
    """One compute point: nominal training FLOPs (the fraction times the budget's allowance)."""

    flops: float
    budget: str
    fraction: float

    def header(self) -> str:
        return f"{flops_text(self.flops)} ({md_escape(self.budget)}, {fraction_text(self.fraction)})"

    def where(self, name_budget: bool) -> str:
        return flops_text(self.flops) + (f" ({md_escape(self.budget)})" if name_budget else "")


@dataclass
class Cell:
    """The points of one row at one compute point: a value per seed, and why other seeds have none."""

    values: dict[int, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def summary(self) -> tuple[float, float, int]:
        return t_interval([self.values[s] for s in sorted(self.values)])


@dataclass
class Series:
    """One row: a method at one sampler setting, over the compute points of its group."""

    method: str
    sampler: str | None
    nfe: int | None
    cells: dict[Column, Cell] = field(default_factory=dict)

    @property
    def setting(self) -> str:
        return "(model)" if self.sampler is None else f"{self.sampler} @ {self.nfe}"

    def label(self, with_setting: bool) -> str:
        return f"{self.method} · {self.setting}" if with_setting else self.method

    def valued(self, column: Column) -> bool:
        cell = self.cells.get(column)
        return cell is not None and bool(cell.values)


@dataclass
class Crossover:
    """``winner`` overtakes ``loser`` between compute points ``before`` and ``after``."""

    winner: Series
    loser: Series
    before: Column
    after: Column
    separated: bool
    why: str  # where the intervals do not separate ("" when they do)


@dataclass
class CurveGroup:
    """The points that share one curve protocol: one table, one plot, crossovers within."""

    metric: str
    direction: str
    protocol: dict
    columns: list[Column]
    series: list[Series]
    model_sizes: dict[str, str]  # budget -> model-size preset its runs trained
    crossovers: list[Crossover] = field(default_factory=list)
    image: str = ""

    @property
    def budgets(self) -> list[str]:
        return sorted({c.budget for c in self.columns})

    def named_with_setting(self, s: Series) -> bool:
        return sum(x.method == s.method for x in self.series) > 1

    def where(self, c: Column) -> str:
        """The compute point in words: its FLOPs, and its budget where two budgets share those FLOPs."""
        return c.where(sum(x.flops == c.flops for x in self.columns) > 1)


@dataclass
class CurvePage:
    """A dataset's curves (per backbone family with ``--same-backbone``)."""

    dataset: str
    backbone: str
    groups: list[CurveGroup]
    records: list[dict]
    warnings: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return page_slug(self.dataset, backbone=self.backbone) + "__curves"

    @property
    def title(self) -> str:
        return f"{self.dataset}{backbone_note(self.backbone)} — quality against training compute"


# -- reading curves ------------------------------------------------------------------------


def has_curve(rec: dict) -> bool:
    """A complete run whose record carries a curve (older records and floor rows have none)."""
    curve = rec.get("curve")
    return rec.get("status") == "ok" and rec.get("source") != REFERENCE and isinstance(curve, list) and bool(curve)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def point_value(point: dict) -> float | None:
    v = point.get("value")
    return float(v) if _number(v) and "error" not in point and "skipped" not in point else None


def fractions_of(rec: dict) -> tuple[float, ...]:
    return tuple(sorted(float(p["fraction"]) for p in rec["curve"]))


def _allowance(rec: dict) -> float | None:
    for v in ((rec.get("train") or {}).get("flops_allowed"), (rec.get("fingerprint_fields") or {}).get("train_flops")):
        if _number(v) and v > 0:
            return float(v)
    return None


def _reference_point(rec: dict) -> dict:
    """The point that states the record's curve protocol: its first valued point, else its first."""
    return next((p for p in rec["curve"] if point_value(p) is not None), rec["curve"][0])


def curve_protocol(rec: dict, producers: dict[str, list[str]]) -> dict:
    """What must match for two records' points to share a curve (see the module docstring)."""
    fields = rec.get("fingerprint_fields") or {}
    point = _reference_point(rec)
    metric = str(point.get("metric"))
    data = {k: v for k, v in fields.items() if k not in BUDGET_FIELDS + NOT_DATA_FIELDS}
    data.setdefault("dataset", rec["dataset"])
    per_metric = fields.get("metrics") or {}
    return {
        "data": data,
        "metric": metric,
        "metric_fields": {m: per_metric[m] for m in producers.get(metric, []) if m in per_metric},
        "curve_version": point.get("version"),
        "samples": point.get("n"),
    }


def _setting(rec: dict) -> tuple[str | None, int | None]:
    point = _reference_point(rec)
    return point.get("sampler"), point.get("nfe")


def _producers(reg) -> dict[str, list[str]]:
    """Metric output name -> the registered metrics that produce it."""
    out: dict[str, list[str]] = {}
    for name in reg.metrics.names():
        for o in reg.metrics.get(name).outputs:
            out.setdefault(o.name, []).append(name)
    return out


# -- checks --------------------------------------------------------------------------------


def check_fractions(records: list[dict], allow_mixed: bool) -> dict[tuple[str, str], str]:
    """Refuse a (dataset, budget) whose records took their curves at different fractions (one
    line), unless ``allow_mixed``; return the warning for each such (dataset, budget) then."""
    warnings = {}
    for dataset, budget in sorted({(str(r["dataset"]), str(r["budget"])) for r in records if has_curve(r)}):
        counts: dict[tuple, int] = {}
        for r in records:
            if has_curve(r) and (str(r["dataset"]), str(r["budget"])) == (dataset, budget):
                counts[fractions_of(r)] = counts.get(fractions_of(r), 0) + 1
        if len(counts) < 2:
            continue
        seen = "; ".join(f"{', '.join(fraction_text(f) for f in fr)} in {n} record(s)" for fr, n in sorted(counts.items()))
        if not allow_mixed:
            raise LeaderboardError(
                f"curves of {dataset} / {budget} were taken at different training fractions ({seen}), so their "
                "points are not at the same compute; rerun them with one budget definition or pass --allow-mixed"
            )
        warnings[(dataset, budget)] = (f"the curves of budget {md_escape(budget)} were taken at different training "
                                       f"fractions ({md_escape(seen)}; built with --allow-mixed): a cell's seeds may "
                                       "come from fewer runs than the row's")
    return warnings


# -- building ------------------------------------------------------------------------------


def build_curve_pages(records: list[dict], reg, allow_mixed: bool = False, same_backbone: bool = False) -> list[CurvePage]:
    """One page per dataset (per dataset and backbone family with ``same_backbone``) that has
    curves; ``[]`` when no record has one. Refuses mixed curve fractions unless ``allow_mixed``."""
    warnings = check_fractions(records, allow_mixed)
    runs = [r for r in records if has_curve(r)]
    if not runs:
        return []
    directions = metric_directions(reg)
    producers = _producers(reg)
    keys: dict[tuple[str, str], str] = {}  # (dataset, family key) -> family shown
    for r in sorted(runs, key=lambda r: (str(r["dataset"]), backbone_family(r))):
        fam = (backbone_family(r) or UNSTATED) if same_backbone else ""
        keys.setdefault((str(r["dataset"]), fam.lower()), fam)
    pages = []
    for (dataset, fam_key), fam in sorted(keys.items()):
        mine = [r for r in runs if str(r["dataset"]) == dataset
                and (not same_backbone or (backbone_family(r) or UNSTATED).lower() == fam_key)]
        groups = _groups(mine, directions, producers, dataset)
        notes = [w for (d, _), w in sorted(warnings.items()) if d == dataset]
        pages.append(CurvePage(dataset, fam, groups, mine, notes))
    return pages


def _groups(runs: list[dict], directions: dict[str, str], producers: dict, dataset: str) -> list[CurveGroup]:
    by_protocol: dict[str, list[dict]] = {}
    protocols: dict[str, dict] = {}
    for r in runs:
        p = curve_protocol(r, producers)
        key = json.dumps(p, sort_keys=True, default=str)
        by_protocol.setdefault(key, []).append(r)
        protocols[key] = p
    groups = []
    for key in sorted(by_protocol, key=lambda k: (sorted({str(r["budget"]) for r in by_protocol[k]}), k)):
        protocol = protocols[key]
        metric = protocol["metric"]
        if metric not in directions:
            raise LeaderboardError(f"curve metric {metric!r} of {dataset!r} is not registered; its direction is unknown")
        group = _group(by_protocol[key], protocol, directions[metric])
        group.crossovers = find_crossovers(group)
        groups.append(group)
    return groups


def _group(runs: list[dict], protocol: dict, direction: str) -> CurveGroup:
    series: dict[tuple, Series] = {}
    columns: set[Column] = set()
    sizes: dict[str, str] = {}
    for r in runs:
        budget = str(r["budget"])
        size = (r.get("fingerprint_fields") or {}).get("model_size")
        if size:
            sizes[budget] = str(size)
        sampler, nfe = _setting(r)
        label = method_label(r)
        s = series.setdefault((label, str(sampler), str(nfe)), Series(label, sampler, nfe))
        allowance = _allowance(r)
        for p in r["curve"]:
            fraction = float(p["fraction"])
            flops = fraction * allowance if allowance else p.get("flops")
            if not _number(flops):
                continue
            col = Column(float(flops), budget, fraction)
            columns.add(col)
            cell = s.cells.setdefault(col, Cell())
            value = point_value(p)
            if value is None:
                why = p.get("skipped") or p.get("error") or "no value"
                cell.missing.append(f"seed {r['seed']}: {one_line(why)}")
            else:
                cell.values[int(r["seed"])] = value
    ordered = sorted(series.values(), key=lambda s: (s.method, s.setting))
    return CurveGroup(protocol["metric"], direction, protocol, sorted(columns), ordered, sizes)


def _better(a: Cell, b: Cell, direction: str) -> bool:
    """``a``'s 95% interval lies wholly on the better side of ``b``'s."""
    ma, ca, na = a.summary
    mb, cb, nb = b.summary
    if na < 2 or nb < 2 or math.isnan(ca) or math.isnan(cb):
        return False
    return ma + ca < mb - cb if direction == "lower" else ma - ca > mb + cb


def _noise_reason(ends: list[tuple[Cell, Cell, str]]) -> str:
    """Why a crossover is not separated: where the intervals overlap, where a side has one seed."""
    overlap = [w for a, b, w in ends if min(a.summary[2], b.summary[2]) >= 2]
    single = [w for a, b, w in ends if min(a.summary[2], b.summary[2]) < 2]
    out = []
    if overlap:
        out.append("the 95% intervals overlap at " + " and at ".join(overlap))
    if single:
        out.append("fewer than 2 seeds (no interval) at " + " and at ".join(single))
    return "; ".join(out)


def find_crossovers(group: CurveGroup) -> list[Crossover]:
    """Every change of order by the mean between consecutive shared compute points, per pair of
    methods (rows of one method at two settings are not compared), labelled separated or noise."""
    sign = 1.0 if group.direction == "lower" else -1.0
    out = []
    for a, b in combinations(group.series, 2):
        if a.method == b.method:
            continue
        shared = [c for c in group.columns if a.valued(c) and b.valued(c)]
        for c0, c1 in zip(shared, shared[1:]):
            d0 = sign * (a.cells[c0].summary[0] - b.cells[c0].summary[0])  # < 0: a is better
            d1 = sign * (a.cells[c1].summary[0] - b.cells[c1].summary[0])
            if d0 * d1 >= 0:
                continue
            winner, loser = (a, b) if d1 < 0 else (b, a)
            sep0 = _better(loser.cells[c0], winner.cells[c0], group.direction)
            sep1 = _better(winner.cells[c1], loser.cells[c1], group.direction)
            ends = [(loser.cells[c0], winner.cells[c0], group.where(c0))] if not sep0 else []
            ends += [(winner.cells[c1], loser.cells[c1], group.where(c1))] if not sep1 else []
            out.append(Crossover(winner, loser, c0, c1, sep0 and sep1, _noise_reason(ends)))
    out.sort(key=lambda x: (x.before, x.after, not x.separated, x.winner.method, x.loser.method))
    return out


def crossover_sentence(group: CurveGroup, x: Crossover) -> str:
    w = md_escape(x.winner.label(group.named_with_setting(x.winner)))
    lo = md_escape(x.loser.label(group.named_with_setting(x.loser)))
    head = f"**{w}** overtakes **{lo}** between {group.where(x.before)} and {group.where(x.after)} FLOPs"
    if x.separated:
        return f"{head}: the 95% intervals separate at both points."
    return f"{head} — within seed noise: {x.why}."


# -- rendering -----------------------------------------------------------------------------


def _caption() -> list[str]:
    return [
        "Each run also scores its method at fixed fractions of its training budget and at the end of training, on a "
        "cheap protocol: the dataset's primary metric only, at one sampler setting (the method's first sampler at the "
        "middle of the budget's NFE grid), on a fixed number of samples (`gmbench.curve`). Columns are the nominal "
        "training FLOPs — the fraction (in brackets) times the budget's training allowance; a point is taken at the "
        "first step past it. Cells are the mean ± 95% t-interval over the seeds of complete runs. The last point "
        "(fraction 1) uses the cheap protocol too, so it is not the board's headline number.",
        "A **crossover** is where the order of two methods by the mean changes between two consecutive compute "
        "points they both have: the method better at the later point overtakes the other there. It is stated as "
        "beyond seed noise only when the two methods' 95% intervals separate (do not overlap) at both points; "
        "otherwise it is listed as *within seed noise*.",
    ]


def _protocol_sentence(g: CurveGroup) -> str:
    per = "test examples" if g.series and all(s.sampler is None for s in g.series) else "samples"
    versions = "; ".join(f"{md_escape(m)} version {md_escape((f or {}).get('version', '?'))}"
                         for m, f in sorted(g.protocol["metric_fields"].items()))
    return (f"Curve protocol: **{md_escape(g.metric)}** ({g.direction} is better) on {md_escape(g.protocol['samples'])} "
            f"{per} per point, curve version {md_escape(g.protocol['curve_version'])}"
            + (f"; {versions}" if versions else "") + ".")


def _join_sentences(g: CurveGroup) -> list[str]:
    out = []
    if len(g.budgets) > 1:
        names = ", ".join(md_escape(b) for b in g.budgets)
        sizes = ", ".join(f"{md_escape(b)}: {md_escape(g.model_sizes[b])}" for b in g.budgets if b in g.model_sizes)
        out.append(f"Budgets {names} are joined on this curve: their curve protocol matches (dataset, metric and its "
                   "version, samples per point, curve version). Their runs trained each budget's own model-size preset"
                   + (f" ({sizes})" if sizes else "") + ", so the curve shows what each budget buys.")
    for method in sorted({s.method for s in g.series}):
        rows = [s for s in g.series if s.method == method]
        if len(rows) > 1:
            out.append(f"{md_escape(method)} has one row per sampler setting ({', '.join(md_escape(s.setting) for s in rows)}): "
                       "each budget samples its curve at the middle of its own NFE grid, and points taken at different "
                       "settings are not one curve.")
    return out


def _table(g: CurveGroup) -> str:
    rows = []
    for s in g.series:
        cells = []
        for c in g.columns:
            cell = s.cells.get(c)
            cells.append("" if cell is None else fmt_ci(*cell.summary) if cell.values else "—")
        rows.append([md_escape(s.method), md_escape(s.setting)] + cells)
    return tabulate(rows, headers=["method", "sampler @ NFE"] + [c.header() for c in g.columns],
                    tablefmt="github", disable_numparse=True)


def _group_heading(page: CurvePage, i: int) -> str:
    g = page.groups[i]
    budgets = ", ".join(md_escape(b) for b in g.budgets)
    same = sum(x.budgets == g.budgets for x in page.groups) > 1
    return f"## {md_escape(g.metric)} — budget{'s' if len(g.budgets) > 1 else ''} {budgets}" + (f" (curve {i + 1})" if same else "")


def _why_separate(page: CurvePage) -> list[str]:
    out = []
    for (i, a), (j, b) in combinations(enumerate(page.groups), 2):
        parts = [f"{PROTOCOL_PARTS[k]} ({_short(a.protocol[k])} vs {_short(b.protocol[k])})"
                 for k in PROTOCOL_PARTS if json.dumps(a.protocol[k], sort_keys=True, default=str)
                 != json.dumps(b.protocol[k], sort_keys=True, default=str)]
        out.append(f"- curve {i + 1} (budget {', '.join(md_escape(x) for x in a.budgets)}) and curve {j + 1} "
                   f"(budget {', '.join(md_escape(x) for x in b.budgets)}) differ in {'; '.join(parts)}.")
    return out


def _short(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return md_escape(text if len(text) <= 60 else text[:59] + "…")


def render_curve_page(page: CurvePage, generator_version: str) -> str:
    lines = [f"# {md_escape(page.title)}", ""]
    for sentence in _caption():
        lines += [sentence, ""]
    for w in page.warnings:
        lines += [f"**Warning:** {w}.", ""]
    if len(page.groups) > 1:
        lines += [f"The points form {len(page.groups)} separate curves: their curve protocols differ, so they are not "
                  "joined (see *Why the curves are separate* below).", ""]
    for i, g in enumerate(page.groups):
        lines += [_group_heading(page, i), "", _protocol_sentence(g), ""]
        for sentence in _join_sentences(g):
            lines += [sentence, ""]
        lines += [_table(g), "", f"![{md_escape(g.metric)} against training FLOPs]({g.image})", "", "### Crossovers", ""]
        if not g.crossovers:
            lines += ["No method overtakes another between consecutive compute points they share.", ""]
        else:
            lines += [f"- {crossover_sentence(g, x)}" for x in g.crossovers] + [""]
        missing = [(s, c, cell) for s in g.series for c, cell in sorted(s.cells.items()) if cell.missing]
        if missing:
            lines += ["### Points without a value", ""]
            lines += [f"- {md_escape(s.label(True))} at {g.where(c)}: {md_escape('; '.join(cell.missing))}"
                      for s, c, cell in missing] + [""]
    if len(page.groups) > 1:
        lines += ["## Why the curves are separate", ""] + _why_separate(page) + [""]
    lines += [footer(page.records, generator_version)]
    return "\n".join(lines) + "\n"


def plot_group(page: CurvePage, g: CurveGroup, path: Path, dpi: int = 100) -> None:
    """The primary metric against training FLOPs (log x), one line per row, 95% intervals as error
    bars; deterministic PNG (no timestamp), laid out as the boards' Pareto plot (gmbench.plot_layout)."""
    import matplotlib.style

    from gmbench.plot_layout import clip_to_means, figure, legend_outside, style, text

    drawn = [(s, [c for c in g.columns if s.valued(c)]) for s in g.series]
    drawn = [(s, cols) for s, cols in drawn if cols]
    with matplotlib.style.context("default"):
        fig, ax = figure(len(drawn))
        means, lows, highs = [], [], []
        for i, (s, cols) in enumerate(drawn):
            stats = [s.cells[c].summary for c in cols]
            ys = [m for m, _, _ in stats]
            yerr = [0.0 if math.isnan(ci) else ci for _, ci, _ in stats]
            ax.errorbar([c.flops for c in cols], ys, yerr=yerr, capsize=3, label=text(s.label(True)), **style(i))
            means += ys
            lows += [y - e for y, e in zip(ys, yerr)]
            highs += [y + e for y, e in zip(ys, yerr)]
        if drawn:
            ax.set_xscale("log")
            clip_to_means(ax, means, lows, highs)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("training FLOPs (log scale)")
        ax.set_ylabel(text(f"{g.metric} ({g.direction} is better)"))
        ax.set_title(text(f"{page.dataset} — budget{'s' if len(g.budgets) > 1 else ''} {', '.join(g.budgets)}"))
        if drawn:
            legend_outside(fig, ax)
        else:
            fig.tight_layout()
        fig.savefig(path, dpi=dpi, format="png", metadata={"Software": None})


def write_curve_pages(pages: list[CurvePage], out: Path, generator_version: str) -> list[Path]:
    """Each page and its plots (``<slug>.png``, or ``<slug>-<i>.png`` for several curves)."""
    written = []
    for page in pages:
        for i, g in enumerate(page.groups):
            g.image = f"{page.slug}.png" if len(page.groups) == 1 else f"{page.slug}-{i + 1}.png"
        md = out / f"{page.slug}.md"
        md.write_text(render_curve_page(page, generator_version))
        written.append(md)
        for g in page.groups:
            plot_group(page, g, out / g.image)
            written.append(out / g.image)
    return written
