"""Leaderboards as a static HTML site: ``gmbench leaderboard --format html``.

The site is the markdown leaderboard (:func:`gmbench.leaderboard.write_leaderboards`)
turned into pages a browser opens from disk, with nothing fetched from anywhere:

* ``index.html``: the boards, the curve pages, the claims report and the records;
* ``<board>.html``: one page per board with sortable tables (click a column header),
  the Pareto plot ``<board>.png`` (:func:`gmbench.leaderboard.plot_board`) and, in the
  ranking table, a *runs* column linking every run of the row to its record;
* ``<dataset>__curves.html``: the quality-against-training-compute pages;
* ``claims.html``: the paper-claims report, as ``gmbench claims`` prints it;
* ``records.html`` and ``records/<run>.json``: every record, one click from any board;
* ``style.css`` and ``sort.js``: the only style and script, written from this module
  (a few lines; no JavaScript, fonts or styles from the internet).

The markdown pages (``index.md``, ``<board>.md``...) stay beside the HTML pages.

Every page is converted from the markdown that the boards already render, so the two
formats never disagree: :func:`md_to_html` knows the subset of markdown gmbench writes
(headings, paragraphs, github tables, bullet lists, images, links, emphasis, code).
Text from records and plugins reaches that markdown through
:func:`gmbench.leaderboard.md_escape`; the converter reads it back to plain text and
writes it with :func:`html.escape`, so no tag, attribute or entity from a plugin
survives into a page. Links are kept only when relative (no ``javascript:``).

Everything written is a pure function of the records (sorted, no timestamps beyond
the records' own), so the same records give byte-identical sites.
"""

from __future__ import annotations

import hashlib
import html
import inspect
import json
import re
from pathlib import Path

__all__ = ["write_html_site", "md_to_html", "record_filenames", "SORT_JS", "STYLE_CSS"]

RECORDS_DIR = "records"

#: Sorting for every ``table.sortable``: click (or Enter on) a header to sort by that column,
#: again to reverse. Cells that start with a number sort numerically (``≤``/``≈`` prefixes and
#: thousands separators ignored), others as text; empty cells and ``—`` stay last.
SORT_JS = r"""(function () {
  "use strict";
  var NUM = /^[\u2264\u2248~<>]?\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)/i;
  function key(cell) {
    var t = cell ? (cell.getAttribute("data-sort") || cell.textContent).trim() : "";
    var m = NUM.exec(t.replace(/,/g, ""));
    return {empty: t === "" || t === "\u2014", n: m ? parseFloat(m[1]) : null, t: t};
  }
  function compare(a, b) {
    if (a.n !== null && b.n !== null && a.n !== b.n) { return a.n < b.n ? -1 : 1; }
    if (a.n !== null && b.n === null) { return -1; }
    if (a.n === null && b.n !== null) { return 1; }
    return a.t < b.t ? -1 : (a.t > b.t ? 1 : 0);
  }
  function sortBy(table, th) {
    var col = th.cellIndex, body = table.tBodies[0];
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows).map(function (r, i) {
      return {row: r, key: key(r.cells[col]), i: i};
    });
    rows.sort(function (a, b) {
      if (a.key.empty !== b.key.empty) { return a.key.empty ? 1 : -1; }
      return (asc ? compare(a.key, b.key) : compare(b.key, a.key)) || a.i - b.i;
    });
    rows.forEach(function (x) { body.appendChild(x.row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  }
  function init() {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
      if (!table.tHead || !table.tBodies.length) { return; }
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
        th.tabIndex = 0;
        th.title = "sort by this column";
        th.addEventListener("click", function () { sortBy(table, th); });
        th.addEventListener("keydown", function (e) {
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th); }
        });
      });
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
"""

STYLE_CSS = """body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  margin: 0; color: #1b1b1b; background: #fff; line-height: 1.45; }
nav { padding: .6em 1.5em; background: #f3f4f6; border-bottom: 1px solid #d8dbe0; }
nav a { margin-right: 1.2em; }
main { padding: 0 1.5em 2em; max-width: 110em; }
a { color: #0b57d0; }
code { background: #f3f4f6; padding: 0 .2em; border-radius: 3px; }
.table-wrap { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border: 1px solid #d8dbe0; padding: .3em .6em; text-align: left; vertical-align: top; }
thead th { background: #f3f4f6; white-space: nowrap; }
table.sortable thead th { cursor: pointer; user-select: none; }
table.sortable thead th::after { content: " \\2195"; color: #9aa0a6; }
table.sortable thead th[aria-sort="ascending"]::after { content: " \\25B2"; color: #1b1b1b; }
table.sortable thead th[aria-sort="descending"]::after { content: " \\25BC"; color: #1b1b1b; }
tbody tr:nth-child(even) { background: #fafafa; }
td.runs a { margin-right: .4em; white-space: nowrap; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
hr { border: 0; border-top: 1px solid #d8dbe0; margin: 2em 0 1em; }
hr + p { color: #555; font-size: .85em; }
"""

# -- markdown (the subset gmbench writes) -> HTML ----------------------------------------------

_PUA = 0xE000  # backslash-escaped characters are held as private-use characters while converting
_BACKSLASHED = re.compile(r"\\([\\`*_\[\]|#~!(){}<>.+\-])")
_URL = r"((?:[^()\s]|\([^()\s]*\))+)"  # a link target, balanced parentheses allowed one deep
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def _hold(text: str) -> str:
    return _BACKSLASHED.sub(lambda m: chr(_PUA + ord(m.group(1))), text)


def _release(text: str, escape: bool) -> str:
    def back(m: re.Match) -> str:
        c = chr(ord(m.group(0)) - _PUA)
        return html.escape(c) if escape else c

    return re.sub("[\ue000-\ue07f]", back, text)


def plain_text(md: str) -> str:
    """The text a markdown cell shows (escapes and entities undone), e.g. to match a method label."""
    return html.unescape(_release(_hold(md).replace("`", "").replace("**", ""), escape=False)).strip()


def _href(url: str) -> str | None:
    """A relative link, with a markdown page's link pointed at its HTML page; None for anything
    with a scheme (``javascript:``, ``http:``...) or an absolute path: a site links within itself."""
    url = html.unescape(url)
    if _SCHEME.match(url) or url.startswith(("/", "\\")):
        return None
    path, sep, frag = url.partition("#")
    if path.endswith(".md"):
        path = path[:-3] + ".html"
    return path + sep + frag


def _link(m: re.Match, image: bool) -> str:
    text, url = m.group(1), _href(m.group(2))
    if url is None:
        return text
    if image:
        return f'<img src="{html.escape(url)}" alt="{text}">'
    return f'<a href="{html.escape(url)}">{text}</a>'


def inline(md: str) -> str:
    """One line of gmbench markdown as HTML: code spans, images, links, **bold**, *italic*.

    The text is taken back to plain characters (backslash escapes, entities) and escaped with
    :func:`html.escape`, so markup in plugin text can only ever show as text.
    """
    parts = re.split(r"(`[^`]*`)", _hold(md))
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # a code span: literal text (no escapes, no entities)
            literal = re.sub("[\ue000-\ue07f]", lambda m: "\\" + chr(ord(m.group(0)) - _PUA), part[1:-1])
            out.append(f"<code>{html.escape(literal)}</code>")
            continue
        s = html.escape(html.unescape(part))
        s = re.sub(r"!\[([^\]]*)\]\(" + _URL + r"\)", lambda m: _link(m, True), s)
        s = re.sub(r"\[([^\]]+)\]\(" + _URL + r"\)", lambda m: _link(m, False), s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", s)
        out.append(s)
    return _release("".join(out), escape=True)


def split_row(line: str) -> list[str]:
    """The cells of one github table row (a ``\\|`` inside a cell is not a column)."""
    held = _hold(line.strip())
    if held.startswith("|"):
        held = held[1:]
    if held.endswith("|"):
        held = held[:-1]
    # cells go back to markdown (escapes restored) for inline()
    return [re.sub("[\ue000-\ue07f]", lambda m: "\\" + chr(ord(m.group(0)) - _PUA), c).strip()
            for c in held.split("|")]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", plain_text(text).lower()).strip("-") or "section"


def md_to_html(md: str, table_hook=None) -> str:
    """The body HTML of one gmbench markdown page.

    ``table_hook(plain_head, plain_body, head_html, body_html) -> (head_html, body_html)`` may add
    columns to a table: it gets the cells' plain text (to match them to records) and their HTML
    (``body_html`` rows are lists of ``(cell HTML, td attributes or None)``); see :func:`_board_hook`.
    """
    lines = md.splitlines()
    out: list[str] = []
    para: list[str] = []
    ids: set[str] = set()

    def flush() -> None:
        if para:
            out.append(f"<p>{inline(' '.join(para))}</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            flush()
            i += 1
        elif m := re.match(r"^(#{1,6})\s+(.*)$", line):
            flush()
            n = len(m.group(1))
            anchor = base = _slug(m.group(2))
            k = 2
            while anchor in ids:
                anchor, k = f"{base}-{k}", k + 1
            ids.add(anchor)
            out.append(f'<h{n} id="{anchor}">{inline(m.group(2))}</h{n}>')
            i += 1
        elif line.strip() == "---":
            flush()
            out.append("<hr>")
            i += 1
        elif line.lstrip().startswith("|"):
            flush()
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block, table_hook))
        elif line.startswith("- "):
            flush()
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        else:
            para.append(line.strip())
            i += 1
    flush()
    return "\n".join(out)


def _table(block: list[str], table_hook) -> str:
    rows = [split_row(line) for line in block]
    has_head = len(rows) > 1 and all(re.fullmatch(r":?-+:?", c) for c in rows[1] if c) and any(rows[1])
    head, body = (rows[0], rows[2:]) if has_head else ([], rows)
    plain_head = [plain_text(c) for c in head]
    plain_body = [[plain_text(c) for c in r] for r in body]
    head_html = [inline(c) for c in head]
    body_html = [[(inline(c), None) for c in r] for r in body]
    if table_hook is not None and head:
        head_html, body_html = table_hook(plain_head, plain_body, head_html, body_html)
    parts = ['<div class="table-wrap"><table class="sortable">' if head else '<div class="table-wrap"><table>']
    if head:
        parts.append("<thead><tr>" + "".join(f'<th scope="col">{h}</th>' for h in head_html) + "</tr></thead>")
    parts.append("<tbody>")
    for r in body_html:
        cells = []
        for cell, attrs in r:
            cells.append(f"<td{attrs or ''}>{cell}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table></div>")
    return "\n".join(parts)


def _title_of(md: str) -> str:
    m = re.search(r"^#\s+(.*)$", md, flags=re.M)
    return plain_text(m.group(1)) if m else "gmbench leaderboards"


def page(title: str, body: str) -> str:
    """A whole HTML page: the shared style and script, a navigation bar, the body."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        '<link rel="icon" href="data:,">\n'
        '<link rel="stylesheet" href="style.css">\n'
        '<script src="sort.js" defer></script>\n'
        "</head>\n<body>\n"
        '<nav><a href="index.html">boards</a><a href="claims.html">paper claims</a>'
        '<a href="records.html">run records</a></nav>\n'
        f"<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


# -- records -----------------------------------------------------------------------------------


def record_filenames(records: list[dict]) -> dict[tuple, str]:
    """``run_key(rec)`` -> ``records/<label>__<dataset>__<budget>__s<seed>.json``, unique (a short
    hash of the run key is added where two names collide, case-insensitively)."""
    from gmbench.leaderboard import _safe, run_key

    names: dict[tuple, str] = {}
    taken: set[str] = set()
    for key in sorted({run_key(r) for r in records}):
        label, dataset, budget, seed = key
        base = _safe(f"{label}__{dataset}__{budget}__s{seed}")[:120]
        name = base
        if name.lower() in taken:
            name = f"{base}-{hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()[:10]}"
        taken.add(name.lower())
        names[key] = f"{RECORDS_DIR}/{name}.json"
    return names


def _record_json(rec: dict) -> str:
    return json.dumps(rec, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def _runs_cell(recs: list[dict], names: dict[tuple, str]) -> tuple[str, str]:
    from gmbench.leaderboard import run_key

    links = []
    for rec in sorted(recs, key=run_key):
        status = "" if rec["status"] == "ok" else f" ({rec['status']})"
        links.append(f'<a href="{html.escape(names[run_key(rec)])}">seed {html.escape(str(rec["seed"]))}'
                     f"{html.escape(status)}</a>")
    return " ".join(links) or "—", f' class="runs" data-sort="{len(links)}"'


def _board_hook(board, names: dict[tuple, str]):
    """Adds a *runs* column to a board's ranking table, a *record* column to tables with a
    method and a seed column (the failed runs) and a *records* column to tables with a method
    and a seeds column (settings without a value)."""
    from gmbench.leaderboard import REFERENCE, method_label

    def label(rec: dict) -> str:
        if rec.get("source") == REFERENCE:
            return str((rec.get("reference") or {}).get("label") or "noise floor")
        return method_label(rec)

    by_label: dict[str, list[dict]] = {}
    for rec in board.records:
        by_label.setdefault(label(rec), []).append(rec)
    seen = {"ranking": False}

    def hook(plain_head, plain_body, head_html, body_html):
        if "method" not in plain_head:
            return head_html, body_html
        col = plain_head.index("method")
        if "#" in plain_head and not seen["ranking"]:
            seen["ranking"] = True
            rows = [r + [_runs_cell(by_label.get(p[col], []), names)] for r, p in zip(body_html, plain_body)]
            return head_html + ["runs"], rows
        seed_col = next((c for c in ("seed", "seeds") if c in plain_head), None)
        if seed_col:  # failed runs (one seed a row) and settings without a value (seeds listed)
            s = plain_head.index(seed_col)
            rows = []
            for r, p in zip(body_html, plain_body):
                seeds = {x.strip() for x in p[s].split(",")}
                match = [rec for rec in by_label.get(p[col], []) if str(rec["seed"]) in seeds]
                rows.append(r + [_runs_cell(match, names)] if match else r + [("—", None)])
            return head_html + ["record" if seed_col == "seed" else "records"], rows
        return head_html, body_html

    return hook


def render_records_page(records: list[dict], names: dict[tuple, str]) -> str:
    """Every record, one row each, linked to its JSON."""
    from gmbench.leaderboard import backbone_of, run_key

    head = ["method", "dataset", "budget", "seed", "status", "backbone", "git revision", "finished", "record"]
    rows = []
    for rec in sorted(records, key=run_key):
        label, dataset, budget, seed = run_key(rec)
        prov = rec.get("provenance") or {}
        cells = [label, dataset, budget, str(seed), str(rec["status"]), backbone_of(rec) or "—",
                 str(prov.get("git_revision") or "—"), str(rec.get("finished_at") or "—")]
        link = f'<a href="{html.escape(names[run_key(rec)])}">JSON</a>'
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + f"<td>{link}</td></tr>")
    table = ('<div class="table-wrap"><table class="sortable"><thead><tr>'
             + "".join(f'<th scope="col">{h}</th>' for h in head) + "</tr></thead><tbody>\n"
             + "\n".join(rows) + "\n</tbody></table></div>")
    body = (f'<h1 id="run-records">Run records</h1>\n<p>{len(records)} run record(s), each as the runner wrote it '
            f"(fields sorted): method, data, budget, seed, metrics, costs, protocol fingerprint and provenance "
            f"(gmbench version, git revision, device).</p>\n{table}")
    return page("Run records", body)


def _claims_markdown(records: list[dict], reg) -> tuple[str, dict]:
    from gmbench.claims import check_claims, render_markdown, summary
    from gmbench.leaderboard import metric_directions

    found = check_claims([reg.claims.get(n) for n in reg.claims.names()], records, metric_directions(reg))
    return render_markdown(found), summary(found)


def _index_markdown(md: str, claims: dict, n_records: int) -> str:
    """The markdown index plus where the claims report and the records are, before its footer."""
    counts = ", ".join(f"{v} {n}" for v, n in claims.items())
    extra = (f"Paper claims checked on these records ({counts}): [the claims report](claims.md).\n\n"
             f"Provenance: [all {n_records} run record(s)](records.md), each linked from its board row.\n")
    cut = md.rfind("\n---\n")
    return md[: cut + 1] + extra + md[cut:] if cut >= 0 else md + "\n" + extra


# -- writing -----------------------------------------------------------------------------------


def write_html_site(records: list[dict], out_dir, reg, **options) -> list[Path]:
    """Write the static site (module doc) to ``out_dir``; return the paths written, ``index.html``
    first. ``options`` are :func:`gmbench.leaderboard.write_leaderboards`'s keywords (``allow_mixed``,
    ``allow_dirty``, ``allow_mixed_revisions``, ``same_backbone``, ``backbone``); the same records
    refuse or pass exactly as for the markdown boards, which are written beside the pages."""
    from gmbench.leaderboard import build_boards, dedupe, filter_backbone, run_key, write_leaderboards

    out = Path(out_dir)
    written_md = write_leaderboards(records, out, reg, **options)
    records, _ = dedupe(records)
    if options.get("backbone") is not None:  # the site holds the records its boards show
        records = filter_backbone(records, options["backbone"])
    accepted = inspect.signature(build_boards).parameters
    boards = {b.slug: b for b in build_boards(records, reg, **{k: v for k, v in options.items() if k in accepted})}
    names = record_filenames(records)

    written: list[Path] = []
    (out / RECORDS_DIR).mkdir(exist_ok=True)
    for rec in sorted(records, key=run_key):
        p = out / names[run_key(rec)]
        p.write_text(_record_json(rec), encoding="utf-8")
        written.append(p)

    claims_md, claims_counts = _claims_markdown(records, reg)
    pages: list[tuple[Path, str, object]] = []
    for p in written_md:
        if p.suffix != ".md":
            continue  # the plots: returned with the markdown pages
        md = p.read_text(encoding="utf-8")
        board = boards.get(p.stem)
        hook = _board_hook(board, names) if board is not None else None
        if p.name == "index.md":
            md = _index_markdown(md, claims_counts, len(records))
        pages.append((p.with_suffix(".html"), md, hook))
    pages.append((out / "claims.html", claims_md, None))

    html_paths = []
    for path, md, hook in pages:
        path.write_text(page(_title_of(md), md_to_html(md, hook)), encoding="utf-8")
        html_paths.append(path)
    (out / "records.html").write_text(render_records_page(records, names), encoding="utf-8")
    (out / "style.css").write_text(STYLE_CSS, encoding="utf-8")
    (out / "sort.js").write_text(SORT_JS, encoding="utf-8")
    html_paths += [out / "records.html", out / "style.css", out / "sort.js"]
    index = out / "index.html"
    return [index] + [p for p in html_paths if p != index] + written + written_md
