"""`gmbench leaderboard --format html`: the static site, its escaping, determinism, and the
pages in a real headless Chromium (console, sorting, record links, layout).

The browser tests need the system's ``chromium`` (``apt-get install chromium``); they are
skipped, saying so, where it is missing. They talk to it over the DevTools protocol with
the small websocket client below (standard library only), so no package is needed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gmbench import hookimpl
from gmbench.claims import Cell, PaperClaim
from gmbench.html_site import inline, md_to_html, write_html_site
from gmbench.leaderboard import write_leaderboards
from gmbench.plugins import Registries, make_plugin_manager
from tests.test_curve_board import crossing_records
from tests.test_leaderboard import LATEST, backbone_records, make_record, standard_records

# crossing_records' near-identical seeds make scipy warn about precision; the numbers are not under test here
pytestmark = pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")

EVIL = "<script>alert(1)</script>\"'&**`|"
EVIL_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;**`|"


class EvilClaims:
    @hookimpl
    def gmbench_register_claims(self, register):
        register(PaperClaim(name="evil" + EVIL, statement="claims " + EVIL, relation="better", metric="swd",
                            dataset="8gaussians", a=Cell("fast", "direct", 1), b=Cell("slow", "euler", 50),
                            source="observation", table="table " + EVIL))


def registries(*plugins) -> Registries:
    return Registries(make_plugin_manager(extra_plugins=plugins, load_entrypoints=False))


def evil_records() -> list[dict]:
    return standard_records() + [
        make_record(EVIL, 0, {("swd", "sampler" + EVIL, 1): 0.2}, hparams={"lr" + EVIL: EVIL}),
        make_record(EVIL, 1, {("swd", "sampler" + EVIL, 1): 0.25}, hparams={"lr" + EVIL: EVIL}),
        make_record("bad-error", 0, {}, status="failed", error="boom " + EVIL + "\nsecond line"),
    ]


class Page(HTMLParser):
    """Tags, their attributes and the text of one HTML page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def site(tmp_path, records=None, reg=None, name="site") -> Path:
    out = tmp_path / name
    write_html_site(records if records is not None else standard_records(), out, reg or registries())
    return out


# -- the site --------------------------------------------------------------------------------


def test_site_has_every_page_and_every_link_resolves(tmp_path):
    out = site(tmp_path)
    for name in ("index.html", "8gaussians__tiny.html", "8gaussians__tiny.png", "claims.html", "records.html",
                 "style.css", "sort.js", "index.md", "8gaussians__tiny.md"):
        assert (out / name).is_file(), name
    assert len(list((out / "records").glob("*.json"))) == len(standard_records())
    for html_file in out.glob("*.html"):
        for tag, attrs in Page(html_file.read_text()).tags:
            for key in ("href", "src"):
                url = attrs.get(key)
                if url is None or url.startswith("data:"):
                    continue
                assert not re.match(r"^[a-z]+:|^/", url), f"{html_file.name}: {url} is not relative"
                assert (out / urllib.parse.unquote(url.partition("#")[0])).is_file(), f"{html_file.name}: {url}"
            if tag == "script":
                assert attrs == {"src": "sort.js", "defer": None}, "the only script is the site's own"
    index = (out / "index.html").read_text()
    assert '<a href="8gaussians__tiny.html">8gaussians / tiny</a>' in index
    assert 'href="claims.html"' in index and 'href="records.html"' in index


def test_each_board_row_links_its_runs_records(tmp_path):
    out = site(tmp_path)
    board = (out / "8gaussians__tiny.html").read_text()
    ranking = board.split('id="quality-versus-nfe"')[0]
    rows = re.findall(r"<tr><td>[^<]*</td><td>([^<]*)</td>.*?<td class=\"runs\"[^>]*>(.*?)</td></tr>", ranking)
    runs = {method: re.findall(r'href="([^"]+)"', cell) for method, cell in rows}
    assert set(runs) == {"fast", "slow", "gan", "broken"}
    assert len(runs["fast"]) == 2 and len(runs["broken"]) == 1
    rec = json.loads((out / runs["slow"][1]).read_text())
    assert (rec["method"], rec["seed"], rec["finished_at"]) == ("slow", 1, LATEST)
    # the failed runs table links each failed run to its record too
    failed = board.split('id="failed-runs"')[1]
    assert re.search(r'<td>broken</td><td>0</td><td>RuntimeError: exploded at step 3</td><td class="runs"[^>]*>'
                     r'<a href="records/broken__8gaussians__tiny__s0.json">seed 0 \(failed\)</a>', failed)


def test_settings_without_a_value_link_their_runs_records(tmp_path):
    cap = "not evaluated: evaluation cap of 900s reached"
    capped = make_record("capped", 1, {("swd", "euler", 10): 0.4, ("*", "euler", 100): None},
                         entry_extra={("*", "euler", 100): {"error": cap}})
    out = site(tmp_path, standard_records() + [capped])
    section = (out / "8gaussians__tiny.html").read_text().split('id="settings-without-a-value"')[1]
    assert re.search(r'<td>capped</td><td>1</td><td>euler@100</td><td>not evaluated: evaluation cap of 900s reached'
                     r'</td><td class="runs"[^>]*><a href="records/capped__8gaussians__tiny__s1.json">seed 1</a>', section)


def test_curve_pages_are_pages_linked_from_their_boards(tmp_path):
    out = site(tmp_path, standard_records() + crossing_records())
    curves = (out / "8gaussians__curves.html").read_text()
    assert "<h1" in curves and "Crossovers" in curves and '<table class="sortable">' in curves
    assert '<img src="8gaussians__curves.png"' in curves and (out / "8gaussians__curves.png").is_file()
    assert 'href="8gaussians__curves.html"' in (out / "8gaussians__small.html").read_text()
    assert 'href="8gaussians__curves.html"' in (out / "index.html").read_text()


def test_backbone_options_give_the_same_boards_as_markdown(tmp_path):
    recs = backbone_records()
    out = tmp_path / "same"
    paths = write_html_site(recs, out, registries(), same_backbone=True)
    boards = sorted(p.stem for p in paths if p.suffix == ".md" and p.name != "index.md")
    assert boards == sorted(p.stem for p in paths if p.suffix == ".html" and "__" in p.name) and len(boards) == 3
    for b in boards:  # every run of each board is linked from its rows
        page = (out / f"{b}.html").read_text()
        linked = set(re.findall(r'href="(records/[^"]+)"', page.split('id="quality-versus-nfe"')[0]))
        assert linked and all((out / link).is_file() for link in linked)
    paths = write_html_site(recs, tmp_path / "unet", registries(), backbone="unet")
    kept = [json.loads(p.read_text()) for p in paths if p.parent.name == "records"]
    assert kept and all(r.get("source") == "reference" or "UNet" in r["backbone"] for r in kept)


def test_claims_report_is_a_page(tmp_path):
    out = site(tmp_path, reg=registries(EvilClaims()))
    claims = Page((out / "claims.html").read_text())
    text = "".join(claims.text)
    assert "Paper claims" in text and "claims " + EVIL in text  # shown as text, escaped in the source
    assert any(tag == "table" for tag, _ in claims.tags)
    assert "claims.html" in (out / "index.html").read_text()


def test_everything_from_records_and_plugins_is_escaped(tmp_path):
    out = site(tmp_path, evil_records(), registries(EvilClaims()))
    pages = {p.name: p.read_text() for p in out.glob("*.html")}
    for name, text in pages.items():
        assert "<script>alert" not in text and "'&" not in text.replace("&#x27;&amp;", ""), name
        scripts = [a for tag, a in Page(text).tags if tag == "script"]
        assert scripts == [{"src": "sort.js", "defer": None}], name
        assert not any(k.startswith("on") for _, a in Page(text).tags for k in a), name
    board = pages["8gaussians__tiny.html"]
    assert EVIL_ESCAPED in board  # the method name, its sampler, its hyper-parameters, the error
    assert "sampler" + EVIL_ESCAPED in board and "boom " + EVIL_ESCAPED in board
    assert "second line" not in board
    assert EVIL_ESCAPED in pages["records.html"] and EVIL_ESCAPED in pages["claims.html"]
    # the escaped method still reaches its records
    evil_row = next(r for r in board.split("<tr>") if r.startswith("<td>") and "lr" + EVIL_ESCAPED in r)
    links = re.findall(r'href="(records/[^"]+)"', evil_row)
    assert len(links) == 2 and all((out / link).is_file() for link in links)
    assert all(json.loads((out / link).read_text())["method"] == EVIL for link in links)


def test_markdown_subset_conversion():
    assert inline("**a** *b* `c_d` [e](x.md) [f](javascript:alert(1)) ![g](p.png)") == (
        '<strong>a</strong> <em>b</em> <code>c_d</code> <a href="x.html">e</a> f <img src="p.png" alt="g">')
    assert inline("a\\|b \\_c &lt;d&gt; \\[x\\](y.md)") == "a|b _c &lt;d&gt; [x](y.md)"
    body = md_to_html("# T\n\n| a | b\\|c |\n|---|--:|\n| 1 | x\\|y |\n\n- one\n- two\n\n---\n*foot*\n")
    assert '<th scope="col">b|c</th>' in body and "<td>x|y</td>" in body
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in body and "<hr>\n<p><em>foot</em></p>" in body


def test_same_records_give_a_byte_identical_site(tmp_path):
    recs = evil_records()
    a = site(tmp_path, recs, name="a")
    b = site(tmp_path, list(reversed(recs)), name="b")
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert f"latest run finished {LATEST}" in (a / "index.html").read_text()


def test_refuses_what_the_markdown_boards_refuse(tmp_path):
    from gmbench.leaderboard import LeaderboardError

    recs = standard_records() + [make_record("other", 0, {("swd", "direct", 1): 0.5}, fingerprint="fp-two")]
    with pytest.raises(LeaderboardError, match="protocol fingerprints"):
        write_html_site(recs, tmp_path / "x", registries())
    paths = write_html_site(recs, tmp_path / "y", registries(), allow_mixed=True)
    assert paths[0] == tmp_path / "y" / "index.html"
    assert {p.name for p in write_leaderboards(recs, tmp_path / "z", registries(), allow_mixed=True)} <= {
        p.name for p in paths}


def test_cli_format_html(tmp_path):
    from click.testing import CliRunner

    from gmbench.cli import main

    results = tmp_path / "r"
    results.mkdir()
    for i, rec in enumerate(standard_records()):
        (results / f"{i}.json").write_text(json.dumps(rec))
    res = CliRunner().invoke(main, ["leaderboard", str(results), "--out", str(tmp_path / "lb"), "--format", "html"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "lb" / "index.html").is_file() and (tmp_path / "lb" / "8gaussians__tiny.html").is_file()


# -- in a real browser -------------------------------------------------------------------------

# GMBENCH_CHROMIUM names the browser binary; GMBENCH_REQUIRE_BROWSER=1 (CI) turns a missing one into a failure
CHROMIUM = os.environ.get("GMBENCH_CHROMIUM") or next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
NO_BROWSER = "no chromium on PATH (apt-get install chromium, or set GMBENCH_CHROMIUM): browser tests skipped"
TIMEOUT = 120  # a safety net against a hung browser, never a verdict on speed


class DevTools:
    """A DevTools-protocol session with one page over a minimal websocket client (RFC 6455,
    text frames; the standard library only)."""

    def __init__(self, ws_url: str):
        u = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._chunk()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.next_id, self.events = 0, []

    def _chunk(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the browser closed the DevTools connection")
        return data

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self._chunk()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode: int, data: bytes) -> None:
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            length = bytes([0x80 | n])
        elif n < 65536:
            length = struct.pack("!BH", 0x80 | 126, n)
        else:
            length = struct.pack("!BQ", 0x80 | 127, n)
        head = bytes([0x80 | opcode]) + length
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _message(self) -> dict:
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 8:
                raise ConnectionError("the browser closed the DevTools connection")
            if opcode == 9:
                self._send(10, payload)
                continue
            if opcode in (0, 1, 2):
                parts.append(payload)
                if b0 & 0x80:
                    return json.loads(b"".join(parts))

    def call(self, method: str, **params):
        self.next_id += 1
        self._send(1, json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            msg = self._message()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait(self, event: str) -> dict:
        while True:
            for i, msg in enumerate(self.events):
                if msg["method"] == event:
                    return self.events.pop(i)
            self.events.append(self._message())

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait("Page.loadEventFired")

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element (not a synthetic DOM click)."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView(); "
                      "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def errors(self) -> list[str]:
        out = []
        for msg in self.events:
            p = msg["params"]
            if msg["method"] == "Runtime.exceptionThrown":
                out.append(str(p["exceptionDetails"]))
            elif msg["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert", "warning"):
                out.append(str(p["args"]))
            elif msg["method"] == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        if os.environ.get("GMBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(NO_BROWSER.replace("skipped", "required (GMBENCH_REQUIRE_BROWSER=1)"))
        pytest.skip(NO_BROWSER)
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + TIMEOUT
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start (exit status {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        dt = DevTools(target["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            dt.call(f"{domain}.enable")
        dt.call("Emulation.setDeviceMetricsOverride", width=1280, height=1600, deviceScaleFactor=1, mobile=False)
        yield dt
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return site(tmp_path_factory.mktemp("html"), evil_records() + crossing_records(), registries(EvilClaims()))


RANKING = "table.sortable"  # the first sortable table of a board page is its ranking


def column(dt: DevTools, index: int) -> list[str]:
    return dt.js(f"Array.from(document.querySelector({json.dumps(RANKING)}).tBodies[0].rows)"
                 f".map(r => r.cells[{index}].textContent.trim())")


def test_every_page_loads_without_console_errors(browser, built):
    for name in sorted(p.name for p in built.glob("*.html")):
        browser.open((built / name).as_uri())
        assert browser.errors() == [], name
        assert browser.js("document.querySelectorAll('script:not([src])').length") == 0, name
        assert browser.js("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"), name
        assert browser.js("document.querySelectorAll('table.sortable th[tabindex]').length") == browser.js(
            "document.querySelectorAll('table.sortable th').length"), f"{name}: sort.js did not run"


def test_clicking_a_header_sorts_the_table(browser, built):
    browser.open((built / "8gaussians__tiny.html").as_uri())
    headers = browser.js(f"Array.from(document.querySelector({json.dumps(RANKING)}).tHead.rows[0].cells)"
                         ".map(c => c.textContent.trim())")
    method, metric = headers.index("method"), headers.index("swd")
    before = column(browser, method)
    assert before[:2] == [f"{EVIL}[lr{EVIL}={EVIL}]", "fast"]  # ranked best first (as text: escaped)
    assert before[-2:] == ["bad-error", "broken"] and before != sorted(before)  # failed last
    browser.click(f"{RANKING} thead th:nth-child({method + 1})")
    assert column(browser, method) == sorted(before)
    browser.click(f"{RANKING} thead th:nth-child({metric + 1})")
    values = column(browser, metric)
    numbers = [float(v.split()[0]) for v in values if v != "—"]
    assert numbers == sorted(numbers) and values[len(numbers):] == ["—"] * (len(values) - len(numbers))
    browser.click(f"{RANKING} thead th:nth-child({metric + 1})")
    values = column(browser, metric)
    assert [float(v.split()[0]) for v in values if v != "—"] == sorted(numbers, reverse=True)
    assert values[-1] == "—"  # missing values stay last either way
    assert browser.js(f"document.querySelector('{RANKING} thead th:nth-child({metric + 1})')"
                      ".getAttribute('aria-sort')") == "descending"
    assert browser.errors() == []


def test_a_record_link_resolves(browser, built):
    browser.open((built / "8gaussians__tiny.html").as_uri())
    href = browser.js("document.querySelector('td.runs a').getAttribute('href')")
    assert href.startswith("records/") and not re.match(r"^[a-z]+:", href)
    resolved = browser.js("document.querySelector('td.runs a').href")
    assert Path(urllib.parse.unquote(urllib.parse.urlparse(resolved).path)).is_file()
    browser.click("td.runs a")
    browser.wait("Page.loadEventFired")
    rec = json.loads(browser.js("document.body.innerText"))
    assert rec["method"] == EVIL and rec["seed"] == 0 and rec["hparams"] == {"lr" + EVIL: EVIL}
    assert browser.errors() == []


def test_board_layout_in_a_screenshot(browser, built):
    """Layout, not pixels: the nav bar on top, the ranking table with one row per method, the
    Pareto plot decoded at its size below it; the screenshot is a PNG of the viewport."""
    browser.open((built / "8gaussians__tiny.html").as_uri())
    layout = browser.js("""(() => {
        const box = e => { const r = e.getBoundingClientRect(); return [r.x, r.y + scrollY, r.width, r.height]; };
        const t = document.querySelector('table.sortable'), img = document.querySelector('img');
        return {nav: box(document.querySelector('nav')), table: box(t), rows: t.tBodies[0].rows.length,
                rowsHeight: Array.from(t.tBodies[0].rows).reduce((h, r) => h + box(r)[3], 0),
                img: box(img), natural: [img.naturalWidth, img.naturalHeight],
                complete: img.complete, h1: box(document.querySelector('h1'))}; })()""")
    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack("!II", shot[16:24]) == (1280, 1600)
    assert layout["rows"] == 6  # fast, slow, the escaped method, gan, broken, bad-error
    assert layout["nav"][1] == 0 and layout["nav"][3] > 0
    assert layout["h1"][1] >= layout["nav"][1] + layout["nav"][3]
    table, img = layout["table"], layout["img"]
    assert table[2] > 300 and table[3] >= layout["rowsHeight"] > 0
    assert layout["complete"] and layout["natural"] == [1050, 450]  # plot_board: 10.5 x 4.5 in at 100 dpi (legend beside)
    assert img[2] > 0 and img[3] > 0 and img[1] > table[1] + table[3]  # the plot comes after the table
    assert browser.errors() == []
