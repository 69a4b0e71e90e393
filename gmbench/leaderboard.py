"""Leaderboards: run records -> markdown boards, a quality-versus-NFE table and a Pareto plot.

One board per (dataset, budget). Methods are ranked by the dataset's primary
metric (``Dataset.primary_metric``; its direction comes from the metric
registry). What a board can be trusted for:

* **Honest selection.** A method's setting (sampler, NFE) is chosen by the best
  *mean over seeds of its validation value*, and the board ranks and reports
  the *test* value at that setting (:func:`gmbench.ranking.select_setting`).
  Choosing on the reported numbers would reward noise. Records without
  validation values are chosen on test, and the board says so per method.
* **Ties.** Ranks come in groups (1, 1, 3, ...): a method shares the rank of
  its group's leader (the group's best method) when the paired t-test across
  seeds (:func:`gmbench.stats.paired_compare`, 95%) at the two chosen settings
  does not separate them, else it leads a new group; ties never chain. With one
  seed, ranks are marked as not tested.
* **Labels.** Likelihoods print as exact (plain), bound (``≤``) or estimate
  (``≈ mean ± stderr``); sampling settings show the counted NFE where the
  record has it; a run whose samples copy the training set is flagged.
* **Networks.** Each row names the network its method trained (the record's
  ``backbone``, from :meth:`gmbench.method.Method.backbone`, e.g.
  ``UNet(small, 1.42M)``) beside its parameter count. A board that mixes
  networks compares architectures as much as methods; ``same_backbone``
  (``gmbench leaderboard --same-backbone``) makes one board per (dataset,
  budget, backbone family) and ``backbone`` (``--backbone unet``) keeps one
  family, so that a board can hold the network fixed.
* **Unranked rows.** Incomplete runs (training stopped at its wall-clock cap)
  and noise-floor rows (``source: "reference"``, see :mod:`gmbench.floor`) are
  shown, marked, and never ranked.
* **Provenance.** Records from a dirty git tree or from several revisions are
  refused unless allowed, and the footer says when they were.
* **Quality against training compute.** Where records carry curves
  (:mod:`gmbench.curve`), each dataset gets a curve page (:mod:`gmbench.curve_board`:
  the primary metric at each training-FLOPs point per method, a plot, and where one
  method overtakes another), joined across budgets where the curve protocol allows,
  and its boards link to it. Records without curves change nothing.

Everything written is a pure function of the records: the date in the footer
is the latest ``finished_at`` of the records, plots carry no timestamp, and
rows are sorted, so the same records give byte-identical files.

Text that comes from plugins (method, dataset, metric and sampler names, error
messages) is escaped with :func:`md_escape` before it reaches a table.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from gmbench.records import RecordError, load_records

REQUIRED_FIELDS = ("method", "dataset", "budget", "seed", "status")


#: what a class-conditional run's label carries (``method_label``), and the caption explains
CONDITIONAL_MARK = "class-conditional"


class LeaderboardError(RecordError):
    """Records that cannot make a fair board (mixed protocols, unknown metric); one line."""


# -- loading -------------------------------------------------------------------------------


def load_results(paths) -> list[dict]:
    """Every record under ``paths`` (files or directories), or a one-line RecordError.

    Unlike :func:`gmbench.records.load_records` this refuses a set with any
    unreadable record: a board or a gate built on part of the results would
    silently be wrong.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise RecordError("no results path given")
    records, problems = load_records(paths)
    if problems:
        more = f" (and {len(problems) - 1} more unreadable record(s))" if len(problems) > 1 else ""
        raise RecordError(problems[0] + more)
    if not records:
        where = ", ".join(str(p) for p in paths)
        raise RecordError(f"no run records (*.json) found in {where}; run `gmbench run --out DIR` first")
    for rec in records:
        missing = [f for f in REQUIRED_FIELDS if f not in rec]
        if missing:
            raise RecordError(f"record of {rec.get('method')!r} lacks field(s) {', '.join(missing)}; it is not a complete run record")
        validate_record(rec)
    return records


class MalformedRecordError(RecordError):
    """A record whose fields have the wrong types (a hand-edited or foreign file); one line."""


def validate_record(rec: dict) -> None:
    """Refuse a record whose fields the boards and the gate would trip over, naming the field.

    Records written by gmbench always pass; this catches hand-edited and foreign files
    (``"value": "NaN"``, ``"seed": "zero"``), which would otherwise surface as a
    traceback deep in the table code, or be silently skipped as an unusable value.
    """
    from gmbench.records import STATUSES

    def bad(what: str) -> MalformedRecordError:
        who = f"{rec.get('method')!r} on {rec.get('dataset')!r}/{rec.get('budget')!r} seed {rec.get('seed')!r}"
        return MalformedRecordError(f"malformed record of {who}: {what}")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for f in ("method", "dataset", "budget"):
        if not isinstance(rec[f], str) or not rec[f]:
            raise bad(f"{f!r} is {rec[f]!r}, not a name")
    seed = rec["seed"]
    if isinstance(seed, bool) or not (isinstance(seed, int) or (isinstance(seed, str) and seed.isdigit())):
        raise bad(f"'seed' is {seed!r}, not an integer")
    if rec["status"] not in STATUSES:
        raise bad(f"'status' is {rec['status']!r}, not one of {', '.join(STATUSES)}")
    if not isinstance(rec.get("hparams") or {}, dict):
        raise bad(f"'hparams' is {rec['hparams']!r}, not an object")
    fingerprint = rec.get("fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise bad(f"'fingerprint' is {fingerprint!r}, not a string (the protocol's hash)")
    for f in ("cost", "train", "provenance", "load", "eval_resumed", "conditioning"):
        if rec.get(f) is not None and not isinstance(rec[f], dict):
            raise bad(f"{f!r} is {rec[f]!r}, not an object")
    sampling = (rec.get("cost") or {}).get("sampling")
    if sampling is not None and not (isinstance(sampling, list) and all(isinstance(s, dict) for s in sampling)):
        raise bad("'cost.sampling' is not a list of objects")
    stages = (rec.get("train") or {}).get("stages")
    if stages is not None and not (isinstance(stages, list) and all(isinstance(s, dict) for s in stages)):
        raise bad("'train.stages' is not a list of objects")
    if rec.get("budget_spent") is not None and not number(rec["budget_spent"]):
        raise bad(f"'budget_spent' is {rec['budget_spent']!r}, not a number")
    metrics = rec.get("metrics") or []
    if not isinstance(metrics, list):
        raise bad("'metrics' is not a list")
    for e in metrics:
        if not isinstance(e, dict):
            raise bad(f"a metric entry is {e!r}, not an object")
        name = e.get("name")
        if e.get("value") is not None and not number(e["value"]):
            raise bad(f"metric {name!r} has value {e['value']!r}, not a number (write null for no value)")
        if e.get("nfe") is not None and (isinstance(e["nfe"], bool) or not isinstance(e["nfe"], int)):
            raise bad(f"metric {name!r} has nfe {e['nfe']!r}, not an integer")
        if e.get("stderr") is not None and not number(e["stderr"]):
            raise bad(f"metric {name!r} has stderr {e['stderr']!r}, not a number")
    curve = rec.get("curve")
    if curve is not None:  # records written before runs took curves have none
        if not isinstance(curve, list):
            raise bad("'curve' is not a list")
        for p in curve:
            if not isinstance(p, dict):
                raise bad(f"a curve point is {p!r}, not an object")
            for key in ("fraction", "flops", "value"):
                if (key == "fraction" or p.get(key) is not None) and not number(p.get(key)):
                    raise bad(f"a curve point has {key} {p.get(key)!r}, not a number")


def method_label(rec: dict) -> str:
    """Method name, plus whatever made the run differ from a plain trained fp32 run.

    ``vae``, ``vae[beta=0.5]``, ``ddpm[bf16]``, ``ddpm[loaded]``,
    ``floor[reference]``: runs with different labels are different entries,
    never averaged together.
    """
    extras = [f"{k}={v}" for k, v in sorted((rec.get("hparams") or {}).items())]
    if rec.get("precision") not in (None, "fp32"):
        extras.append(str(rec["precision"]))
    if rec.get("source") in ("loaded", "reference", "external"):
        extras.append(str(rec["source"]))  # an external "ddpm" is never merged with a trained one
    if rec.get("conditioning"):  # told which class to draw: never merged with, or mistaken for, an unconditional run
        extras.append(f"{rec['conditioning'].get('kind', 'class')}-conditional")
    return f"{rec['method']}[{', '.join(extras)}]" if extras else str(rec["method"])


def run_key(rec: dict) -> tuple:
    """(method label, dataset, budget, seed): what identifies a run across result sets."""
    return (method_label(rec), str(rec["dataset"]), str(rec["budget"]), int(rec["seed"]))


def dedupe(records: list[dict]) -> tuple[list[dict], int]:
    """Keep the latest record of each run (a run may sit in two result directories)."""
    latest: dict[tuple, dict] = {}
    for rec in records:
        k = run_key(rec)
        if k not in latest or str(rec.get("finished_at") or "") >= str(latest[k].get("finished_at") or ""):
            latest[k] = rec
    return [latest[k] for k in sorted(latest)], len(records) - len(latest)


# -- tables --------------------------------------------------------------------------------


def values_frame(records: list[dict], statuses=("ok",)) -> pd.DataFrame:
    """One row per usable metric value of the runs with a status in ``statuses``, joined with
    the sampling speed of its setting. ``split`` is 'val' or 'test' (see gmbench.ranking.split_of)."""
    from gmbench.ranking import split_of, usable

    rows = []
    for rec in records:
        if rec["status"] not in statuses:
            continue
        speed = {(c.get("sampler"), c.get("nfe")): c.get("samples_per_s") for c in (rec.get("cost") or {}).get("sampling", [])}
        method, dataset, budget, seed = run_key(rec)
        for e in rec.get("metrics") or []:
            if not usable(e):
                continue
            rows.append({
                "method": method, "dataset": dataset, "budget": budget, "seed": seed,
                "name": str(e.get("name")), "sampler": e.get("sampler"), "nfe": e.get("nfe"),
                "value": float(e["value"]), "label": e.get("label"), "split": split_of(e),
                "stderr": e.get("stderr"), "samples_per_s": speed.get((e.get("sampler"), e.get("nfe"))),
            })
    cols = ["method", "dataset", "budget", "seed", "name", "sampler", "nfe", "value", "label", "split", "stderr", "samples_per_s"]
    return pd.DataFrame(rows, columns=cols)


def t_interval(values) -> tuple[float, float, int]:
    """(mean, half-width of the 95% Student-t interval, n); the half-width is NaN for one value."""
    from gmbench.stats import summarize

    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan, 0
    s = summarize(vals)
    return s.mean, math.nan if s.half_width is None else s.half_width, s.n


def metric_directions(reg) -> dict[str, str]:
    """Every registered metric output name -> 'lower' or 'higher'."""
    out = {}
    for mname in reg.metrics.names():
        for o in reg.metrics.get(mname).outputs:
            out[o.name] = o.direction
    return out


#: Share of copied samples above which a run is flagged "memorised". It mirrors
#: COPY_FLAG in gmbench/metrics/memorisation.py (the metric that writes `copy_share`);
#: hard-coded so that boards do not import a metric module.
COPY_FLAG = 0.5
COPY_METRIC = "copy_share"

#: sample-quality guards a board shows beside its ranking, per modality: the failures a ranking
#: metric can hide (far-off toy samples, dropped modes; text the source cannot produce, collapsed
#: or looping text; image modes dropped: recall). Shown where the records hold them.
SAMPLE_GUARDS = {
    "toy2d": ("off_support", "mode_coverage", "sample_nll"),
    "image": ("precision", "recall"),
    "text": ("sample_nll_bits", "impossible_share", "gen_ppl", "unigram_entropy_bits", "repeat_4gram_rate"),
}
REFERENCE = "reference"  # the ``source`` of noise-floor records (gmbench.floor)


@dataclass
class Board:
    """One (dataset, budget) board, or one (dataset, budget, backbone family) board, ready to render."""

    dataset: str
    budget: str
    metric: str
    direction: str
    ranking: list[dict]  # one per method: ranked rows best first, then unranked ones
    by_nfe: pd.DataFrame  # test mean/ci/n of the metric per method, sampler, nfe
    failed: list[dict]  # failed records
    records: list[dict]
    fingerprints: list[str] = field(default_factory=list)
    floors: list[dict] = field(default_factory=list)  # noise-floor rows (unranked)
    backbone: str = ""  # the backbone family the board is restricted to; "" = every network
    curves: str = ""  # slug of the dataset's curve page (gmbench.curve_board); "" = its records have no curves
    #: test mean/ci/n of the modality's SAMPLE_GUARDS per method, sampler, nfe (column ``name``),
    #: with the sampling ``precision`` the runs recorded
    samples: pd.DataFrame | None = None
    guard_directions: dict = field(default_factory=dict)  # "lower"/"higher" per guard shown

    @property
    def slug(self) -> str:
        return page_slug(self.dataset, self.budget, backbone=self.backbone)

    @property
    def title(self) -> str:
        return f"{self.dataset} — budget {self.budget}{backbone_note(self.backbone)}"

    @property
    def ranked(self) -> list[dict]:
        return [r for r in self.ranking if r["ranked"]]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", str(text)).lstrip(".") or "-"


def page_slug(*parts: str, backbone: str = "") -> str:
    """A page's file name: its parts made path-safe, joined by ``__``, then the backbone family."""
    names = [_safe(p) for p in parts] + ([_safe(backbone.lower())] if backbone else [])
    return "__".join(names)


def backbone_note(backbone: str) -> str:
    """The title's tail of a page restricted to one backbone family ("" when it is not)."""
    return f" — backbone {backbone}" if backbone else ""


UNSTATED = "unstated"  # the backbone family of records that name none (written before records had one)


def backbone_of(rec: dict) -> str:
    """The network a run trained, as its record states it (``"UNet(small, 1.42M)"``); ``""``
    for records that state none. Read defensively: older records have no ``backbone``."""
    b = rec.get("backbone")
    return " ".join(b.split()) if isinstance(b, str) else ""


def backbone_family(rec: dict) -> str:
    """The backbone family: the text before the first ``(`` of :func:`backbone_of` (``"UNet"``),
    or ``""``. Boards compare families case-insensitively."""
    return backbone_of(rec).split("(")[0].strip()


def filter_backbone(records: list[dict], family: str) -> list[dict]:
    """The records of runs on a ``family`` backbone (``"unet"`` matches ``UNet(small, 1.42M)``),
    plus the noise-floor records of the (dataset, budget) pairs that keep a run; a one-line
    LeaderboardError when no run used that family."""
    want = str(family).strip().lower()
    if not want or "(" in want:
        raise LeaderboardError(f"--backbone takes a backbone family such as unet or mlp, not {family!r}")
    kept = [r for r in records if r.get("source") != REFERENCE and (backbone_family(r) or UNSTATED).lower() == want]
    if not kept:
        found = sorted({backbone_family(r) or UNSTATED for r in records if r.get("source") != REFERENCE}, key=str.lower)
        raise LeaderboardError(
            f"no run record used a {family!r} backbone; the records' backbone families: {', '.join(found) or 'none'} "
            f"({UNSTATED}: records written before runs recorded their backbone)"
        )
    pairs = {(str(r["dataset"]), str(r["budget"])) for r in kept}
    floors = [r for r in records if r.get("source") == REFERENCE and (str(r["dataset"]), str(r["budget"])) in pairs]
    return kept + floors


def _board_groups(records: list[dict], same_backbone: bool, restricted: bool) -> list[tuple[str, str, str, list[dict]]]:
    """(dataset, budget, backbone family shown, records) per board, sorted. With ``same_backbone``
    one board per family of the runs, each with its (dataset, budget)'s noise-floor records."""
    groups = []
    for dataset, budget in sorted({(str(r["dataset"]), str(r["budget"])) for r in records}):
        recs = [r for r in records if (str(r["dataset"]), str(r["budget"])) == (dataset, budget)]
        runs = [r for r in recs if r.get("source") != REFERENCE]
        if not (same_backbone or restricted) or not runs:
            groups.append((dataset, budget, "", recs))
            continue
        floors = [r for r in recs if r.get("source") == REFERENCE]
        shown: dict[str, str] = {}  # family key -> its first spelling in sorted order
        for spelling in sorted({backbone_family(r) for r in runs}):
            shown.setdefault(spelling.lower(), spelling or UNSTATED)
        for key in sorted(shown):
            groups.append((dataset, budget, shown[key], [r for r in runs if backbone_family(r).lower() == key] + floors))
    return groups


def build_boards(records: list[dict], reg, allow_mixed: bool = False, allow_dirty: bool = False,
                 allow_mixed_revisions: bool = False, same_backbone: bool = False,
                 backbone: str | None = None) -> list[Board]:
    """Group records into boards; refuse mixed fingerprints, dirty trees and mixed git
    revisions unless allowed. ``same_backbone``: one board per (dataset, budget, backbone
    family) instead of per (dataset, budget); ``backbone``: only runs on that family
    (:func:`filter_backbone`)."""
    from gmbench.ranking import primary_metric

    check_revisions(records, allow_dirty, allow_mixed_revisions)
    directions = metric_directions(reg)
    if backbone is not None:
        records = filter_backbone(records, backbone)
    boards = []
    for dataset, budget, family, recs in _board_groups(records, same_backbone, backbone is not None):
        where = f"{dataset} / {budget}" + (f" / {family}" if family else "")
        fps = _check_fingerprints(recs, where, allow_mixed)
        try:
            metric = primary_metric(reg, dataset)
        except Exception:  # noqa: BLE001 - a registry error means "unknown"
            metric = ""
        if not metric:
            raise LeaderboardError(
                f"dataset {dataset!r} is not registered by any installed plugin (or names no primary metric), "
                "so its ranking metric is unknown; install the plugin that provides it"
            )
        if metric not in directions:
            raise LeaderboardError(f"metric {metric!r} (primary for {dataset!r}) is not registered; its direction is unknown")
        direction = directions[metric]
        methods = [r for r in recs if r.get("source") != REFERENCE]
        v = values_frame(methods)  # this board's runs only: a label can have runs on two boards
        v = v[v.split == "test"]
        guards = SAMPLE_GUARDS.get(str(recs[0].get("modality")), ())
        boards.append(Board(
            dataset, budget, metric, direction,
            ranking=_rank(methods, metric, direction),
            by_nfe=_by_setting(v[v.name == metric]),
            samples=_guard_values(v[v.name.isin(guards) & (v.name != metric)], methods),
            guard_directions={g: directions[g] for g in guards if g in directions},
            failed=[r for r in recs if r["status"] not in ("ok", "incomplete")],
            records=recs,
            fingerprints=fps,
            floors=_floor_rows([r for r in recs if r.get("source") == REFERENCE], metric, direction),
            backbone=family,
        ))
    return boards


def _check_fingerprints(recs: list[dict], where: str, allow_mixed: bool) -> list[str]:
    fps = sorted({r["fingerprint"] for r in recs if r.get("fingerprint")})
    if len(fps) > 1 and not allow_mixed:
        raise LeaderboardError(
            f"board {where} mixes {len(fps)} protocol fingerprints ({', '.join(fps)}), "
            f"differing in {', '.join(differing_fields(recs)) or 'unrecorded fields'}: "
            "their numbers are not comparable; regenerate the records with one gmbench version or pass --allow-mixed"
        )
    return fps


def git_revisions(records: list[dict]) -> list[str]:
    """The distinct recorded git revisions (records without one are left out)."""
    return sorted({str((r.get("provenance") or {}).get("git_revision")) for r in records
                   if (r.get("provenance") or {}).get("git_revision")})


def dirty_records(records: list[dict]) -> list[dict]:
    """Records made from a git tree with uncommitted changes (revision ending in ``-dirty``)."""
    return [r for r in records if str((r.get("provenance") or {}).get("git_revision") or "").endswith("-dirty")]


def check_revisions(records: list[dict], allow_dirty: bool, allow_mixed_revisions: bool) -> None:
    """Refuse records whose code cannot be recovered (dirty trees) or that come from several
    revisions (numbers from different code are never merged silently); one line each."""
    dirty = dirty_records(records)
    if dirty and not allow_dirty:
        raise LeaderboardError(
            f"{len(dirty)} of {len(records)} record(s) were made from a git tree with uncommitted changes "
            "(revision ends in -dirty), so the code behind them cannot be recovered; "
            "rerun from a clean checkout or pass --allow-dirty"
        )
    revs = git_revisions(records)
    if len(revs) > 1 and not allow_mixed_revisions:
        raise LeaderboardError(
            f"the records come from {len(revs)} git revisions ({', '.join(r[:12] for r in revs)}): "
            "numbers from different code are not merged silently; rerun on one revision or pass --allow-mixed-revisions"
        )


def differing_fields(recs: list[dict]) -> list[str]:
    """Keys of ``fingerprint_fields`` whose values differ between records."""
    fields = [r.get("fingerprint_fields") or {} for r in recs if r.get("fingerprint")]
    keys = sorted(set().union(*fields)) if fields else []
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in fields}) > 1]


def _by_setting(v: pd.DataFrame) -> pd.DataFrame:
    """Mean, 95% CI and n of one metric per (method, sampler, nfe), plus mean samples/s."""
    cols = ["method", "sampler", "nfe", "mean", "ci", "n", "samples_per_s"]
    if v.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (method, sampler, nfe), g in v.groupby(["method", "sampler", "nfe"], dropna=False, sort=True):
        mean, ci, n = t_interval(g["value"])
        sps = g["samples_per_s"].dropna()
        rows.append({"method": method, "sampler": None if pd.isna(sampler) else sampler,
                     "nfe": None if pd.isna(nfe) else int(nfe), "mean": mean, "ci": ci, "n": n,
                     "samples_per_s": float(sps.mean()) if len(sps) else math.nan})
    return pd.DataFrame(rows, columns=cols)


def _guard_values(v: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """Mean, 95% CI and n per (method, sampler, nfe, metric name) of test-split guard values,
    with the sampling precision(s) the runs recorded for that setting."""
    cols = ["method", "sampler", "nfe", "name", "mean", "ci", "n", "precision"]
    if v.empty:
        return pd.DataFrame(columns=cols)
    precision: dict[tuple, set] = {}
    for r in records:
        for e in r.get("metrics") or []:
            if e.get("sampler") is not None and e.get("sampling_precision"):
                key = (method_label(r), e["sampler"], e.get("nfe"))
                precision.setdefault(key, set()).add(str(e["sampling_precision"]))
    rows = []
    for (method, sampler, nfe, name), g in v.groupby(["method", "sampler", "nfe", "name"], sort=True):
        mean, ci, n = t_interval(g["value"])
        nfe = int(nfe)
        rows.append({"method": method, "sampler": sampler, "nfe": nfe, "name": name, "mean": mean, "ci": ci, "n": n,
                     "precision": ", ".join(sorted(precision.get((method, sampler, nfe), ())))})
    return pd.DataFrame(rows, columns=cols)


def _rank(recs: list[dict], metric: str, direction: str) -> list[dict]:
    """One row per method: ranked rows best first with their rank groups, then unranked rows."""
    rows = [_method_row(m, [r for r in recs if method_label(r) == m], metric, direction)
            for m in sorted({method_label(r) for r in recs})]
    sign = 1.0 if direction == "lower" else -1.0
    rows.sort(key=lambda r: (not r["ranked"], math.isnan(r["mean"]),
                             sign * r["mean"] if not math.isnan(r["mean"]) else 0.0, r["method"]))
    assign_ranks([r for r in rows if r["ranked"]], direction)
    return rows


def _method_row(method: str, runs: list[dict], metric: str, direction: str) -> dict:
    """A method's row: its test values at the setting chosen on validation (gmbench.ranking).

    Ranked on its ok runs; a method with only incomplete runs is shown from those, unranked.
    """
    from gmbench.ranking import select_setting, selected_values

    ok = [r for r in runs if r["status"] == "ok"]
    incomplete = [r for r in runs if r["status"] == "incomplete"]
    scored = ok or incomplete
    sel = select_setting(scored, metric, direction)
    values = selected_values(scored, metric, sel) if sel else {}
    mean, ci, n = t_interval(values.values())
    at = _entries_at(scored, metric, sel) if sel else []
    return {
        "method": method, "ranked": bool(ok) and bool(values), "seeds_ok": len(ok), "seeds": len(runs),
        "errors": sorted({one_line(r.get("error")) for r in runs if r["status"] not in ("ok", "incomplete")}),
        "budget_spent": [float(r.get("budget_spent") or 0.0) for r in incomplete],
        "values": values, "mean": mean, "ci": ci, "n": n,
        "sampler": sel.sampler if sel else None, "nfe": sel.nfe if sel else None,
        "nfe_shown": _shown_nfe(at, sel.nfe) if sel else None,
        "chosen_on": sel.note if sel else None,
        "samples_per_s": _mean([c.get("samples_per_s") for r in scored for c in (r.get("cost") or {}).get("sampling", [])
                                if sel and (c.get("sampler"), c.get("nfe")) == (sel.sampler, sel.nfe)]),
        # counted FLOPs of one sample at the chosen setting (the host's sampling audit; records
        # written before it have none): sampling cost that does not depend on the machine
        "sample_flops": _median([c.get("flops_per_sample") for r in scored for c in (r.get("cost") or {}).get("sampling", [])
                                 if sel and (c.get("sampler"), c.get("nfe")) == (sel.sampler, sel.nfe)]),
        "likelihood": _likelihood(_model_values(values_frame(scored, statuses=("ok", "incomplete")))),
        # what the method declares (exact, bound, ...), so a likelihood that errored or was not
        # evaluated is not shown as "none", which means the method gives no likelihood
        "likelihood_declared": sorted({str(r["likelihood"]) for r in scored if r.get("likelihood") not in (None, "", "none")}),
        "copies": _copies(scored, sel),
        "params": _median([(r.get("cost") or {}).get("params") for r in scored]),
        "backbone": sorted({backbone_of(r) for r in runs} - {""}),
        "train_flops": _median([(r.get("cost") or {}).get("train_flops") for r in scored]),
        "rank": None, "vs_lead": "",
    }


def _entries_at(records: list[dict], metric: str, sel) -> list[dict]:
    from gmbench.ranking import entry_at

    return [e for e in (entry_at(r, metric, sel.sampler, sel.nfe) for r in records) if e is not None]


def _shown_nfe(entries: list[dict], nfe):
    """The counted network calls per sample (mean over seeds) where recorded, else the nominal NFE."""
    counted = [e["nfe_counted"] for e in entries if isinstance(e.get("nfe_counted"), (int, float))]
    if counted:
        return format(sum(counted) / len(counted), ".4g")
    return nfe


def _model_values(v: pd.DataFrame) -> pd.DataFrame:
    """Test-split values of labelled model metrics (the likelihood)."""
    return v[v.sampler.isna() & v.label.notna() & (v.split == "test")]


def _copies(records: list[dict], sel) -> dict | None:
    """copy_share at the chosen setting: mean over seeds and how many runs exceed COPY_FLAG."""
    if sel is None:
        return None
    from gmbench.ranking import entry_at

    shares = [float(e["value"]) for e in (entry_at(r, COPY_METRIC, sel.sampler, sel.nfe) for r in records) if e]
    if not shares:
        return None
    return {"mean": sum(shares) / len(shares), "flagged": sum(s > COPY_FLAG for s in shares), "n": len(shares)}


def assign_ranks(rows: list[dict], direction: str) -> None:
    """Rank groups (1, 1, 3, ...) over rows sorted best first, in place.

    A group is led by its first (best) row; a later row joins it, sharing its rank,
    when the paired t-test across the seeds both ran (gmbench.stats.paired_compare,
    95%) does not find the *leader* better, and starts a new group otherwise. Testing
    against the leader rather than the row above keeps ties from chaining: with A
    tied with B and B with C, C still ranks below A when A is better than C. With
    fewer than 2 shared seeds the pair is not tested and the rank stays strict
    (``tested`` False). ``vs_lead`` says how the row compared with its group's leader.
    """
    from gmbench.stats import paired_compare

    leader = None
    for i, row in enumerate(rows):
        row["tested"] = True
        if i == 0:
            row["rank"], row["vs_lead"], leader = 1, "", row
            continue
        c = paired_compare(row["values"], leader["values"], direction)
        if c.p_value is None:
            row["rank"], row["tested"], leader = i + 1, False, row
            row["vs_lead"] = f"not tested ({len(c.seeds)} shared seed{'s' if len(c.seeds) != 1 else ''})"
        elif c.better == "b":
            row["rank"] = i + 1
            row["vs_lead"] = f"worse than {leader['method']} (p = {c.p_value:.2g})"
            leader = row
        else:
            row["rank"], row["vs_lead"] = leader["rank"], f"tied with {leader['method']} (p = {c.p_value:.2g})"


def _floor_rows(records: list[dict], metric: str, direction: str) -> list[dict]:
    """One unranked row per noise-floor kind (gmbench.floor): mean over its seeds."""
    rows = []
    for label in sorted({str((r.get("reference") or {}).get("label") or "noise floor") for r in records}):
        runs = [r for r in records if str((r.get("reference") or {}).get("label") or "noise floor") == label]
        row = _method_row(label, runs, metric, direction)
        row["ranked"], row["floor"] = False, True
        fv = values_frame(runs)
        fv = fv[fv.split == "test"]
        row["guards"] = {name: t_interval(g["value"]) for name, g in fv.groupby("name")}  # the sample-quality row
        rows.append(row)
    return rows


UNIFIED_LIKELIHOOD = ("test_nll", "test_bpd", "test_bpc")


def _likelihood(v: pd.DataFrame) -> dict | None:
    if v.empty:
        return None
    # the unified likelihood (nats, bits/dim or bits/char) before derived numbers such as gaps
    names = sorted(v.name.unique(), key=lambda n: (n not in UNIFIED_LIKELIHOOD, n))
    name = names[0]
    g = v[v.name == name]
    mean, ci, n = t_interval(g["value"])
    out = {"name": name, "mean": mean, "ci": ci, "n": n, "label": "/".join(sorted(set(g.label.astype(str)))),
           "stderr": math.nan}
    if "stderr" in g:
        se = [float(x) for x in g["stderr"] if isinstance(x, (int, float)) and math.isfinite(x)]
        if len(se) == len(g):  # standard error of the mean of independent estimates
            out["stderr"] = math.sqrt(sum(x * x for x in se)) / len(se)
    return out


def _mean(values) -> float:
    vals = [float(x) for x in values if isinstance(x, (int, float))]
    return sum(vals) / len(vals) if vals else math.nan


def _median(values) -> float:
    vals = sorted(float(x) for x in values if isinstance(x, (int, float)))
    return vals[len(vals) // 2] if vals else math.nan


def one_line(text, limit: int = 200) -> str:
    lines = str(text if text is not None else "unknown error").strip().splitlines()
    first = lines[0] if lines else "unknown error"
    return first if len(first) <= limit else first[: limit - 1] + "…"


# -- markdown ------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def md_escape(text) -> str:
    """Plugin-provided text made safe for one markdown table cell.

    Line breaks become spaces (a newline would end the row), HTML is turned
    into entities (no tags, no comments), and markdown punctuation that could
    open a link, emphasis, code or a new column is backslash-escaped.
    """
    s = " ".join(str(text).splitlines())
    s = _CONTROL.sub(" ", s)
    s = html.escape(s, quote=False)
    return _MD_SPECIAL.sub(r"\\\1", s)


def fmt(x, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, spec)


def fmt_ci(mean: float, ci: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "—"
    if n < 2 or math.isnan(ci):
        return f"{mean:.4g} (n=1)"
    return f"{mean:.4g} ± {ci:.2g} (n={n})"


def _likelihood_cell(lk: dict | None, declared: list[str] | tuple = ()) -> str:
    """exact: plain; bound: ``≤ ``; estimate: ``≈ mean ± stderr``; no likelihood: ``none``;
    a likelihood the method declares but no run has a value of: ``no value``."""
    if lk is None:
        return f"no value ({md_escape('/'.join(declared))} declared)" if declared else "none"
    what = f"{md_escape(lk['name'])}, {md_escape(lk['label'])}"
    if "estimate" in lk["label"] and "bound" not in lk["label"]:
        se = "stderr ?" if math.isnan(lk["stderr"]) else f"± {lk['stderr']:.2g} stderr"
        seeds = f"; seeds ± {lk['ci']:.2g}, n={lk['n']}" if lk["n"] > 1 and not math.isnan(lk["ci"]) else f", n={lk['n']}"
        return f"≈ {lk['mean']:.4g} {se}{seeds} {what}"
    bound = "≤ " if "bound" in lk["label"] else ""
    return f"{bound}{fmt_ci(lk['mean'], lk['ci'], lk['n'])} {what}"


def _status_cell(r: dict) -> str:
    """ok, or what kept runs out: incomplete (with the budget share spent) and failed seeds."""
    parts = []
    spent = r["budget_spent"]
    if spent:
        share = f"{min(spent):.0%}" if min(spent) == max(spent) else f"{min(spent):.0%}–{max(spent):.0%}"
        seeds = "" if len(spent) == r["seeds"] else f"{len(spent)}/{r['seeds']} seeds, "
        parts.append(f"incomplete ({seeds}{share} of budget)")
    failed = r["seeds"] - r["seeds_ok"] - len(spent)
    if failed:
        parts.append(f"failed ({failed}/{r['seeds']} seeds): {md_escape('; '.join(r['errors']))}")
    return "; ".join(parts) or "ok"


def _rank_cell(r: dict) -> str:
    if not r["ranked"]:
        return "—"
    return f"{r['rank']}" if r.get("tested", True) else f"{r['rank']}‡"


def _setting_cell(r: dict) -> str:
    if r["sampler"] is None:
        return "—" if r["nfe"] is None else f"@ {r['nfe_shown']}"
    return f"{md_escape(r['sampler'])} @ {md_escape(r['nfe_shown'])}"


def _copies_cell(c: dict | None, flag_it: bool = True) -> str:
    """copy_share at the chosen setting; runs above COPY_FLAG are marked (never a floor row: a
    train-split floor copies the training set by construction)."""
    if c is None:
        return "—"
    flag = "" if not (c["flagged"] and flag_it) else (" memorised" if c["flagged"] == c["n"] else f" memorised ({c['flagged']}/{c['n']} seeds)")
    return f"{c['mean']:.2g}{flag}"


def _table_row(r: dict, rank: str, method: str, status: str) -> dict:
    return {
        "#": rank,
        "method": method,
        "metric": fmt_ci(r["mean"], r["ci"], r["n"]),
        "seeds ok": f"{r['seeds_ok']}/{r['seeds']}",
        "sampler @ NFE": _setting_cell(r),
        # a true-distribution floor knows its exact test likelihood (gmbench.floor); a train-vs-test one has none
        "likelihood": (("—" if r["likelihood"] is None else _likelihood_cell(r["likelihood"])) if r.get("floor")
                       else _likelihood_cell(r["likelihood"], r.get("likelihood_declared", ()))),
        "chosen on": "—" if r.get("floor") else r["chosen_on"] or "—",
        "vs group lead": md_escape(r["vs_lead"]) if r["vs_lead"] else "—",
        "copies": _copies_cell(r["copies"], flag_it=not r.get("floor")),
        "samples/s": fmt(r["samples_per_s"], ".3g"),
        "FLOPs/sample": fmt(r.get("sample_flops"), ".3g"),
        "backbone": "—" if r.get("floor") or not r["backbone"] else md_escape("; ".join(r["backbone"])),
        "params": fmt(r["params"], ",.0f"),
        "train FLOPs": fmt(r["train_flops"], ".3g"),
        "status": status,
    }


def _caption(board: Board) -> list[str]:
    """The sentences that say how to read the board (only those that apply to it)."""
    m = md_escape(board.metric)
    ranked = board.ranked
    out = [
        f"Ranked by **{m}** ({board.direction} is better) on the test split: mean ± 95% t-interval over seeds, "
        "at each method's sampler and NFE chosen by the best mean over seeds of the **validation** value "
        "(column *chosen on*; \"test (no validation values)\" for records without validation values). "
        "NFE is the counted number of network calls per sample where the record has it, else the nominal NFE.",
    ]
    if any(r.get("tested", True) for r in ranked[1:]):
        out.append("**#** gives rank groups: a group is led by its best method, and a method shares the leader's rank "
                   "when a paired t-test across seeds at the two methods' chosen settings "
                   "(`gmbench.stats.paired_compare`, two-sided, 95%) does not separate it from the leader, else it "
                   "leads a new group (column *vs group lead*). Ties do not chain: a method clearly worse than a "
                   "group's leader never shares its rank.")
    if any(not r.get("tested", True) for r in ranked):
        out.append("Ranks marked ‡ are **not tested** for significance: fewer than 2 seeds are shared with the leader "
                   "of the group above (one seed cannot separate methods from seed noise).")
    out.append("Likelihood: plain = exact; ≤ = an upper bound on the NLL (the true NLL is lower); "
               "≈ = an unbiased stochastic estimate ± its standard error; none = the method gives no likelihood."
               + (" No value = it gives one, but no run has a test value (see *Settings without a value*)."
                  if any(r.get("likelihood") is None and r.get("likelihood_declared") for r in board.ranking) else ""))
    if any(r["budget_spent"] for r in board.ranking):
        out.append("Incomplete runs (training stopped at the wall-clock cap) show the share of the training budget "
                   "they spent; they are never ranked.")
    if any(r["copies"] for r in board.ranking + board.floors):
        out.append(f"*copies*: share of samples nearer a training example than real held-out data usually is "
                   f"(`{COPY_METRIC}`); above {COPY_FLAG:g} the run is marked memorised.")
    if any(CONDITIONAL_MARK in r["method"] for r in board.ranking):
        out.append(f"*{CONDITIONAL_MARK}*: the method was trained on the labels and each sample was drawn given a "
                   "class (balanced over the dataset's classes, shuffled by the seed; `gmbench.conditioning`). "
                   "Knowing the class is an advantage the unconditional rows do not have.")
    if board.backbone:
        out.append(f"Only runs that trained a **{md_escape(board.backbone)}** network are on this board (the family "
                   "of each record's *backbone*, the text before its bracket), so it compares methods on the same "
                   "kind of network; parameter counts may still differ (column *params*).")
    elif len({b.split("(")[0].strip().lower() for r in board.ranking for b in r["backbone"]}) > 1:
        out.append("The rows trained different networks (column *backbone*), so their differences mix method and "
                   "architecture; `gmbench leaderboard --same-backbone` makes one board per backbone family.")
    if board.floors:
        out.append("Noise-floor rows score real data exactly like a method's samples — fresh draws from the true "
                   "distribution, or a subset of the train split (train vs test) where the distribution is unknown — "
                   "and are not ranked: a method within the floor's interval is as good as this metric can tell. "
                   "Where a metric's own reference is the train split (FID by default), the train-split row is the "
                   "memorisation point rather than a floor."
                   + (" A true-distribution row's likelihood is the data's own exact density on the same test "
                      "examples: the best test likelihood any model can expect."
                      if any(f["likelihood"] is not None for f in board.floors) else ""))
    return out


def render_board(board: Board, generator_version: str) -> str:
    """The markdown page of one board."""
    m = md_escape(board.metric)
    lines = [f"# {md_escape(board.title)}", ""]
    for sentence in _caption(board):
        lines += [sentence, ""]
    if len(board.fingerprints) > 1:
        lines += [f"**Warning:** this board mixes {len(board.fingerprints)} protocol fingerprints "
                  f"(differing in {md_escape(', '.join(differing_fields(board.records)) or '?')}); "
                  "numbers may not be comparable.", ""]
    if not board.ranked:
        lines += [f"No complete run reported {m}: the methods cannot be ranked.", ""]
    table = [_table_row(f, "—", md_escape(f["method"]), "reference (unranked)") for f in board.floors]
    table += [_table_row(r, _rank_cell(r), md_escape(r["method"]), _status_cell(r)) for r in board.ranking]
    headers = list(table[0]) if table else []
    if not any(r["copies"] for r in board.ranking + board.floors):
        headers.remove("copies")
    if not any(r["backbone"] for r in board.ranking):  # records from before runs recorded it
        headers.remove("backbone")
    if all(math.isnan(r.get("sample_flops", math.nan)) for r in board.ranking):  # before the sampling audit
        headers.remove("FLOPs/sample")
    lines += [tabulate([[row[h] for h in headers] for row in table],
                       headers=[m if h == "metric" else h for h in headers], tablefmt="github", disable_numparse=True), ""]

    if board.samples is not None and not board.samples.empty:
        lines += ["## Sample quality", "", _guards_caption(board), "", _guard_table(board), ""]
    lines += ["## Quality versus NFE", "",
              f"{m} on the test split (mean ± 95% interval over seeds of complete runs) per method and sampler, "
              "by nominal NFE (the setting; counted calls per sample are in the main table).", ""]
    lines += [_nfe_table(board.by_nfe), ""]
    unevaluated = _unevaluated_rows(board)
    if unevaluated:
        lines += ["## Settings without a value", "",
                  "Runs that did not fail but recorded no value for these settings (blank above), with the "
                  "reason their records give: a claim or a reader comparing at these settings has fewer seeds, "
                  "or none.", ""]
        lines += [tabulate(unevaluated, headers=["method", "seeds", "settings", "reason"], tablefmt="github",
                           disable_numparse=True), ""]
    lines += ["## Quality versus sampling cost", "", f"![{m} against seconds per sample]({board.slug}.png)", ""]
    if board.curves:
        lines += ["## Quality against training compute", "",
                  f"{m} against training FLOPs per method, from the curves the runs took during training, joined "
                  f"across budgets where the curve protocol allows, with the crossovers: "
                  f"[{md_escape(board.dataset)} curves]({board.curves}.md).", ""]
    if board.failed:
        lines += ["## Failed runs", ""]
        rows = [[md_escape(method_label(r)), r["seed"], md_escape(one_line(r.get("error")))] for r in board.failed]
        lines += [tabulate(sorted(rows, key=lambda x: (x[0], x[1])), headers=["method", "seed", "error"],
                           tablefmt="github", disable_numparse=True), ""]
    lines += [footer(board.records, generator_version)]
    return "\n".join(lines) + "\n"


def _unevaluated_rows(board: Board) -> list[list[str]]:
    """(method, seeds, settings, reason) for the metric entries of runs that did not fail but
    carry an error instead of a value (an evaluation cap reached, a sampler that raised),
    grouped by method and reason; optional metrics that were skipped are not errors."""
    per_run: dict[tuple[str, str, object], set] = {}  # (method, reason, seed) -> settings
    for rec in board.records:
        if rec.get("status") == "failed":
            continue
        for e in rec.get("metrics") or []:
            if e.get("value") is not None or not e.get("error"):
                continue
            where = f"{e['sampler']}@{e['nfe']}" if e.get("sampler") is not None else "model"
            setting = where if e.get("name") in ("*", None) else f"{e['name']} at {where}"
            per_run.setdefault((method_label(rec), one_line(e["error"]), rec["seed"]), set()).add(setting)
    # seeds share a row only when they miss the same settings for the same reason
    groups: dict[tuple[str, str, tuple], list] = {}
    for (method, reason, seed), settings in per_run.items():
        groups.setdefault((method, reason, tuple(sorted(settings, key=_setting_order))), []).append(seed)
    return [[md_escape(method), ", ".join(str(s) for s in sorted(seeds)), md_escape(", ".join(settings)),
             md_escape(reason)] for (method, reason, settings), seeds in
            sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], min(kv[1])))]


def _setting_order(setting: str) -> tuple:
    """Settings by NFE, then name (``ddim@100`` after ``ddim@50``)."""
    head, _, nfe = setting.rpartition("@")
    return (int(nfe), head) if nfe.isdigit() else (math.inf, setting)


def _guard_rows(board: Board) -> list[tuple[str, str, int]]:
    """(method, sampler, nfe) rows of the sample-quality table, in ranking order: a method's
    chosen setting, or every setting it sampled when its ranking needs none (a model metric)."""
    settings = board.samples[["method", "sampler", "nfe"]].drop_duplicates()
    rows = []
    for r in board.ranking:
        mine = settings[settings.method == r["method"]]
        if r.get("sampler") is not None:
            mine = mine[(mine.sampler == r["sampler"]) & (mine.nfe == r["nfe"])]
        rows += [(r["method"], s, int(n)) for s, n in sorted(zip(mine.sampler, mine.nfe), key=lambda k: (str(k[0]), k[1]))]
    return rows


def _guards_caption(board: Board) -> str:
    return ("What the ranking metric can hide, from the same samples (test split, mean ± 95% interval over seeds): "
            "each method at its chosen sampler and NFE, or at every setting when it is ranked by a model metric. "
            "NFE here is the setting's nominal value (the main table shows counted network calls, higher for a "
            "sampler that calls its network more than once per step). "
            "*sampling precision* is the float precision the samples were drawn in. "
            "Directions: "
            + "; ".join(f"{md_escape(n)} ({board.guard_directions.get(n, '?')} is better)" for n in _guard_names(board))
            + ".")


def _guard_names(board: Board) -> list[str]:
    present = set(board.samples.name)
    return [n for g in SAMPLE_GUARDS.values() for n in g if n in present]


def _guard_table(board: Board) -> str:
    names = _guard_names(board)
    cells = {(r["method"], r["sampler"], r["nfe"], r["name"]): fmt_ci(r["mean"], r["ci"], r["n"])
             for r in board.samples.to_dict("records")}
    prec = {(r["method"], r["sampler"], r["nfe"]): r["precision"] for r in board.samples.to_dict("records")}
    rows = [[md_escape(f["method"]), "—", "—"] + [fmt_ci(*f["guards"][name]) if name in f.get("guards", {}) else ""
                                                   for name in names] for f in board.floors]
    rows += [[md_escape(m), f"{md_escape(s)} @ {n}", md_escape(prec.get((m, s, n)) or "—")]
             + [cells.get((m, s, n, name), "") for name in names] for m, s, n in _guard_rows(board)]
    return tabulate(rows, headers=["method", "sampler @ NFE", "sampling precision"] + [md_escape(n) for n in names],
                    tablefmt="github", disable_numparse=True)


def _nfe_table(by_nfe: pd.DataFrame) -> str:
    if by_nfe.empty:
        return "(no values)"
    records = by_nfe.to_dict("records")
    nfes = sorted({r["nfe"] for r in records}, key=lambda n: (n is None, n or 0))
    rows = []
    for method, sampler in sorted({(r["method"], r["sampler"]) for r in records}, key=lambda k: (k[0], str(k[1]))):
        cells = {r["nfe"]: fmt_ci(r["mean"], r["ci"], r["n"]) for r in records if (r["method"], r["sampler"]) == (method, sampler)}
        rows.append([md_escape(method), md_escape(sampler) if sampler is not None else "(model)"] + [cells.get(n, "") for n in nfes])
    headers = ["method", "sampler"] + [f"NFE {n}" if n is not None else "(no sampling)" for n in nfes]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def footer(records: list[dict], generator_version: str) -> str:
    """Provenance of a page: versions, git revisions, devices and date, all from the records."""
    prov = [r.get("provenance") or {} for r in records]

    def joined(key: str) -> str:
        vals = sorted({str(p[key]) for p in prov if p.get(key)})
        return md_escape(", ".join(vals)) if vals else "unknown"

    fps = sorted({str(r["fingerprint"]) for r in records if r.get("fingerprint")})
    latest = max((str(r.get("finished_at") or "") for r in records), default="") or "unknown"
    return (
        f"---\n*{len(records)} run record(s) from gmbench {joined('gmbench_version')} at git revision "
        f"{joined('git_revision')}, device {joined('device')}; protocol fingerprint "
        f"{md_escape(', '.join(fps) or 'none')}; latest run finished {md_escape(latest)}. "
        f"Page generated by gmbench {md_escape(generator_version)}.*" + _provenance_warnings(records)
    )


def _provenance_warnings(records: list[dict]) -> str:
    """What the page was allowed to include (it would have been refused otherwise)."""
    out = []
    dirty = dirty_records(records)
    if dirty:
        out.append(f"{len(dirty)} record(s) from a git tree with uncommitted changes (built with --allow-dirty)")
    revs = git_revisions(records)
    if len(revs) > 1:
        out.append(f"records from {len(revs)} git revisions (built with --allow-mixed-revisions)")
    return "".join(f"\n\n**Warning:** {w}." for w in out)


def render_index(boards: list[Board], records: list[dict], generator_version: str, curve_pages=()) -> str:
    rows = []
    for b in boards:
        leaders = [md_escape(r["method"]) for r in b.ranked if r["rank"] == 1]
        rows.append([
            f"[{md_escape(b.dataset)} / {md_escape(b.budget)}"
            f"{' / ' + md_escape(b.backbone) if b.backbone else ''}]({b.slug}.md)",
            f"{md_escape(b.metric)} ({b.direction})",
            (", ".join(leaders) + (" (tied)" if len(leaders) > 1 else "")) if leaders else "—",
            len(b.ranking),
            len(b.records),
            # incomplete runs (stopped at the wall-clock cap) are shown on the board but never ranked
            f"{len(b.failed)}" + (f" (+{n} incomplete)" if (n := sum(r.get("status") == "incomplete" for r in b.records))
                                  else ""),
        ])
    table = tabulate(rows, headers=["board", "ranked by", "leader", "methods", "runs", "failed runs"],
                     tablefmt="github", disable_numparse=True)
    per = "dataset, compute budget and backbone family" if any(b.backbone for b in boards) else "dataset and compute budget"
    curves = []
    if curve_pages:
        links = ", ".join(f"[{md_escape(p.dataset)}{' / ' + md_escape(p.backbone) if p.backbone else ''}]({p.slug}.md)"
                          for p in curve_pages)
        curves = [f"Quality against training compute (joined across budgets where the curve protocol allows): {links}.", ""]
    return "\n".join(["# gmbench leaderboards", "", f"One board per {per}.", "", table, "", *curves,
                      footer(records, generator_version)]) + "\n"


# -- plot ----------------------------------------------------------------------------------


def pareto_front(points: list[tuple[float, float]], direction: str) -> list[tuple[float, float]]:
    """Points not beaten in both cost (lower better) and quality, sorted by cost."""
    sign = 1.0 if direction == "lower" else -1.0
    front, best = [], math.inf
    for x, y in sorted(points, key=lambda p: (p[0], sign * p[1])):
        if sign * y < best:
            front.append((x, y))
            best = sign * y
    return front


def plot_board(board: Board, path: Path, dpi: int = 100) -> None:
    """Quality against seconds per sample, one series per (method, sampler); deterministic PNG,
    the legend beside the axes (gmbench.plot_layout)."""
    import matplotlib.style

    from gmbench.plot_layout import figure, legend_outside, style, text

    d = board.by_nfe.dropna(subset=["samples_per_s"])
    d = d[d.samples_per_s > 0]
    groups = list(d.groupby(["method", "sampler"], dropna=False, sort=True))
    floors = [f for f in board.floors if not math.isnan(f["mean"])]
    with matplotlib.style.context("default"):
        fig, ax = figure(len(groups) + 1 + len(floors))
        points = []
        for i, ((method, sampler), g) in enumerate(groups):
            g = g.sort_values("nfe")
            x = (1.0 / g.samples_per_s).tolist()
            ax.plot(x, g["mean"].tolist(), label=text(f"{method} · {sampler}"), **style(i))
            points += list(zip(x, g["mean"].tolist()))
        if points:
            front = pareto_front(points, board.direction)
            ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, marker="s", mfc="none", ms=10,
                    label="Pareto front")
            for f in floors:  # a floor has no sampling cost: a horizontal line
                ax.axhline(f["mean"], color="grey", ls=":", lw=1, label=text(f["method"]))
            ax.set_xscale("log")
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("seconds per sample (log scale)")
        ax.set_ylabel(text(f"{board.metric} ({board.direction} is better)"))
        ax.set_title(text(board.title))
        if points:
            legend_outside(fig, ax)
        else:
            fig.tight_layout()
        fig.savefig(path, dpi=dpi, format="png", metadata={"Software": None})


# -- writing -------------------------------------------------------------------------------


def write_leaderboards(records: list[dict], out_dir, reg, allow_mixed: bool = False, allow_dirty: bool = False,
                       allow_mixed_revisions: bool = False, same_backbone: bool = False,
                       backbone: str | None = None) -> list[Path]:
    """Write every board, its plot and ``index.md`` to ``out_dir``; return the paths written.
    ``same_backbone`` and ``backbone``: see :func:`build_boards`."""
    from gmbench import __version__
    from gmbench.curve_board import build_curve_pages, write_curve_pages

    records, _ = dedupe(records)
    boards = build_boards(records, reg, allow_mixed=allow_mixed, allow_dirty=allow_dirty,
                          allow_mixed_revisions=allow_mixed_revisions, same_backbone=same_backbone, backbone=backbone)
    pages = build_curve_pages(filter_backbone(records, backbone) if backbone is not None else records, reg,
                              allow_mixed=allow_mixed, same_backbone=same_backbone)
    for b in boards:
        b.curves = next((p.slug for p in pages if p.dataset == b.dataset
                         and (not same_backbone or p.backbone.lower() == b.backbone.lower())), "")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, used = [], {p.slug for p in pages}
    if len(used) < len(pages):
        raise LeaderboardError("two curve pages map to the same file; rename a dataset or backbone")
    for b in boards:
        if b.slug in used:  # two names that differ only in unsafe characters
            raise LeaderboardError(f"boards {b.title!r} and another map to the same file {b.slug}.md")
        used.add(b.slug)
        page = out / f"{b.slug}.md"
        page.write_text(render_board(b, __version__))
        plot_board(b, out / f"{b.slug}.png")
        written += [page, out / f"{b.slug}.png"]
    written += write_curve_pages(pages, out, __version__)
    index = out / "index.md"
    index.write_text(render_index(boards, records, __version__, pages))
    return [index] + written
