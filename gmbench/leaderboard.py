"""Leaderboards: run records -> markdown boards, a quality-versus-NFE table and a Pareto plot.

One board per (dataset, budget). Methods are ranked by the dataset's primary
metric (``Dataset.primary_metric``; its direction comes from the metric
registry). For each method the sampler and NFE with the best *mean over seeds*
is chosen first, and the mean and 95% t-interval are reported at that setting.
(Taking each seed's own best setting and averaging those would reward noise:
the selection would be made on the very numbers being averaged.)

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
    return records


def method_label(rec: dict) -> str:
    """Method name, plus whatever made the run differ from a plain trained fp32 run.

    ``vae``, ``vae[beta=0.5]``, ``ddpm[bf16]``, ``ddpm[loaded]``: runs with
    different labels are different entries, never averaged together.
    """
    extras = [f"{k}={v}" for k, v in sorted((rec.get("hparams") or {}).items())]
    if rec.get("precision") not in (None, "fp32"):
        extras.append(str(rec["precision"]))
    if rec.get("source") == "loaded":
        extras.append("loaded")
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


def values_frame(records: list[dict]) -> pd.DataFrame:
    """One row per metric value of an ok run, joined with the sampling speed of its setting."""
    rows = []
    for rec in records:
        if rec["status"] != "ok":
            continue
        speed = {(c.get("sampler"), c.get("nfe")): c.get("samples_per_s") for c in (rec.get("cost") or {}).get("sampling", [])}
        method, dataset, budget, seed = run_key(rec)
        for e in rec.get("metrics") or []:
            v = e.get("value")
            if e.get("error") or v is None or not math.isfinite(v):
                continue
            rows.append({
                "method": method, "dataset": dataset, "budget": budget, "seed": seed,
                "name": str(e.get("name")), "sampler": e.get("sampler"), "nfe": e.get("nfe"),
                "value": float(v), "label": e.get("label"),
                "samples_per_s": speed.get((e.get("sampler"), e.get("nfe"))),
            })
    cols = ["method", "dataset", "budget", "seed", "name", "sampler", "nfe", "value", "label", "samples_per_s"]
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


@dataclass
class Board:
    """One (dataset, budget) board, ready to render."""

    dataset: str
    budget: str
    metric: str
    direction: str
    ranking: list[dict]  # one per method, best first
    by_nfe: pd.DataFrame  # mean/ci/n of the metric per method, sampler, nfe
    failed: list[dict]  # failed records
    records: list[dict]
    fingerprints: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return f"{_safe(self.dataset)}__{_safe(self.budget)}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", str(text)).lstrip(".") or "-"


def build_boards(records: list[dict], reg, allow_mixed: bool = False) -> list[Board]:
    """Group records into boards; refuse mixed fingerprints unless ``allow_mixed``."""
    from gmbench.ranking import primary_metric

    directions = metric_directions(reg)
    values = values_frame(records)
    boards = []
    for dataset, budget in sorted({(str(r["dataset"]), str(r["budget"])) for r in records}):
        recs = [r for r in records if (str(r["dataset"]), str(r["budget"])) == (dataset, budget)]
        fps = _check_fingerprints(recs, f"{dataset} / {budget}", allow_mixed)
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
        v = values[(values.dataset == dataset) & (values.budget == budget)]
        by_nfe = _by_setting(v[v.name == metric])
        boards.append(Board(
            dataset, budget, metric, direction,
            ranking=_rank(recs, v, by_nfe, direction),
            by_nfe=by_nfe,
            failed=[r for r in recs if r["status"] != "ok"],
            records=recs,
            fingerprints=fps,
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


def _rank(recs, v: pd.DataFrame, by_nfe: pd.DataFrame, direction: str) -> list[dict]:
    """One row per method, best first. A method's setting is chosen among those
    measured on the most seeds (a sampler that failed on some seeds must not win
    on the lucky rest), then by mean, then by fewer NFE."""
    sign = 1.0 if direction == "lower" else -1.0
    rows = []
    for method in sorted({method_label(r) for r in recs}):
        runs = [r for r in recs if method_label(r) == method]
        ok = [r for r in runs if r["status"] == "ok"]
        row = {
            "method": method, "seeds_ok": len(ok), "seeds": len(runs),
            "errors": sorted({one_line(r.get("error")) for r in runs if r["status"] != "ok"}),
            "mean": math.nan, "ci": math.nan, "n": 0, "sampler": None, "nfe": None, "samples_per_s": math.nan,
            "likelihood": _likelihood(v[(v.method == method) & v.sampler.isna() & v.label.notna()]),
            "params": _median([(r.get("cost") or {}).get("params") for r in ok]),
            "train_flops": _median([(r.get("cost") or {}).get("train_flops") for r in ok]),
        }
        settings = by_nfe[by_nfe.method == method]
        if not settings.empty:
            settings = settings[settings.n == settings.n.max()]
            best = min(settings.to_dict("records"), key=lambda s: (sign * s["mean"], s["nfe"] or 0, str(s["sampler"])))
            row.update({k: best[k] for k in ("mean", "ci", "n", "sampler", "nfe", "samples_per_s")})
        rows.append(row)
    rows.sort(key=lambda r: (math.isnan(r["mean"]), sign * r["mean"] if not math.isnan(r["mean"]) else 0.0, r["method"]))
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
    return {"name": name, "mean": mean, "ci": ci, "n": n, "label": "/".join(sorted(set(g.label.astype(str))))}


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


def _likelihood_cell(lk: dict | None) -> str:
    if lk is None:
        return "none"
    bound = "≤ " if "bound" in lk["label"] else ""
    return f"{bound}{fmt_ci(lk['mean'], lk['ci'], lk['n'])} {md_escape(lk['name'])}, {md_escape(lk['label'])}"


def render_board(board: Board, generator_version: str) -> str:
    """The markdown page of one board."""
    m = md_escape(board.metric)
    lines = [
        f"# {md_escape(board.dataset)} — budget {md_escape(board.budget)}",
        "",
        f"Ranked by **{m}** ({board.direction} is better): mean ± 95% t-interval over seeds, "
        "at each method's best sampler and NFE (best by mean over seeds). "
        "Likelihood: ≤ marks a bound (the true NLL is lower), exact otherwise.",
        "",
    ]
    if len(board.fingerprints) > 1:
        lines += [f"**Warning:** this board mixes {len(board.fingerprints)} protocol fingerprints "
                  f"(differing in {md_escape(', '.join(differing_fields(board.records)) or '?')}); "
                  "numbers may not be comparable.", ""]
    if all(math.isnan(r["mean"]) for r in board.ranking):
        lines += [f"No run reported {m}: the methods cannot be ranked.", ""]
    table = []
    rank = 0
    for r in board.ranking:
        ranked = not math.isnan(r["mean"])
        rank += ranked
        status = "ok" if r["seeds_ok"] == r["seeds"] else (
            f"failed ({r['seeds'] - r['seeds_ok']}/{r['seeds']} seeds): {md_escape('; '.join(r['errors']))}")
        table.append([
            rank if ranked else "—",
            md_escape(r["method"]),
            fmt_ci(r["mean"], r["ci"], r["n"]),
            f"{r['seeds_ok']}/{r['seeds']}",
            f"{md_escape(r['sampler'])} @ {r['nfe']}" if r["sampler"] is not None else "—",
            _likelihood_cell(r["likelihood"]),
            fmt(r["samples_per_s"], ".3g"),
            fmt(r["params"], ",.0f"),
            fmt(r["train_flops"], ".3g"),
            status,
        ])
    headers = ["#", "method", m, "seeds ok", "sampler @ NFE", "likelihood", "samples/s", "params", "train FLOPs", "status"]
    lines += [tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]

    lines += ["## Quality versus NFE", "", f"{m} (mean ± 95% interval over seeds) per method and sampler.", ""]
    lines += [_nfe_table(board.by_nfe), ""]
    lines += ["## Quality versus sampling cost", "", f"![{m} against seconds per sample]({board.slug}.png)", ""]
    if board.failed:
        lines += ["## Failed runs", ""]
        rows = [[md_escape(method_label(r)), r["seed"], md_escape(one_line(r.get("error")))] for r in board.failed]
        lines += [tabulate(sorted(rows, key=lambda x: (x[0], x[1])), headers=["method", "seed", "error"],
                           tablefmt="github", disable_numparse=True), ""]
    lines += [footer(board.records, generator_version)]
    return "\n".join(lines) + "\n"


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
        f"Page generated by gmbench {md_escape(generator_version)}.*"
    )


def render_index(boards: list[Board], records: list[dict], generator_version: str) -> str:
    rows = []
    for b in boards:
        leader = next((r for r in b.ranking if not math.isnan(r["mean"])), None)
        rows.append([
            f"[{md_escape(b.dataset)} / {md_escape(b.budget)}]({b.slug}.md)",
            f"{md_escape(b.metric)} ({b.direction})",
            md_escape(leader["method"]) if leader else "—",
            len(b.ranking),
            len(b.records),
            len(b.failed),
        ])
    table = tabulate(rows, headers=["board", "ranked by", "leader", "methods", "runs", "failed runs"],
                     tablefmt="github", disable_numparse=True)
    return "\n".join(["# gmbench leaderboards", "", "One board per dataset and compute budget.", "", table, "",
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
    """Quality against seconds per sample, one series per (method, sampler); deterministic PNG."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def text(s) -> str:  # '$' would start mathtext; a newline would break the legend
        return " ".join(str(s).splitlines()).replace("$", r"\$")

    with matplotlib.style.context("default"):
        fig = Figure(figsize=(7, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        d = board.by_nfe.dropna(subset=["samples_per_s"])
        d = d[d.samples_per_s > 0]
        points = []
        for (method, sampler), g in d.groupby(["method", "sampler"], dropna=False, sort=True):
            g = g.sort_values("nfe")
            x = (1.0 / g.samples_per_s).tolist()
            ax.plot(x, g["mean"].tolist(), marker="o", label=text(f"{method} · {sampler}"))
            points += list(zip(x, g["mean"].tolist()))
        if points:
            front = pareto_front(points, board.direction)
            ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, marker="s", mfc="none", ms=10,
                    label="Pareto front")
            ax.set_xscale("log")
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("seconds per sample (log scale)")
        ax.set_ylabel(text(f"{board.metric} ({board.direction} is better)"))
        ax.set_title(text(f"{board.dataset} — budget {board.budget}"))
        fig.tight_layout()
        fig.savefig(path, dpi=dpi, format="png", metadata={"Software": None})


# -- writing -------------------------------------------------------------------------------


def write_leaderboards(records: list[dict], out_dir, reg, allow_mixed: bool = False) -> list[Path]:
    """Write every board, its plot and ``index.md`` to ``out_dir``; return the paths written."""
    from gmbench import __version__

    records, _ = dedupe(records)
    boards = build_boards(records, reg, allow_mixed=allow_mixed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for b in boards:
        if b.slug in used:  # two names that differ only in unsafe characters
            raise LeaderboardError(f"boards {b.dataset!r}/{b.budget!r} and another map to the same file {b.slug}.md")
        used.add(b.slug)
        page = out / f"{b.slug}.md"
        page.write_text(render_board(b, __version__))
        plot_board(b, out / f"{b.slug}.png")
        written += [page, out / f"{b.slug}.png"]
    index = out / "index.md"
    index.write_text(render_index(boards, records, __version__))
    return [index] + written
