"""Mutation testing of one method module: do its tests notice when its mathematics is wrong?

A small AST mutator (no third-party tool: mutmut needs a writable checkout of its own and
does not know our test layout). For the module given with ``--module`` it makes one mutant
per change of

* an arithmetic operator (``+ <-> -``, ``* <-> /``, ``** -> *``, ``// -> /``), also in ``+=``;
* a comparison (``< <-> <=``, ``> <-> >=``, ``== <-> !=``, ``is <-> is not``, ``in <-> not in``);
* a boolean operator (``and <-> or``), a unary minus or ``not`` (dropped);
* a number (``n -> n + 1``, as mutmut does),

skipping docstrings, f-strings, type annotations and ``raise`` statements (their mutants
only change error messages). Each mutant is written into a *copy* of the working tree (the
repository itself is never modified) and the module's test file runs there with
``pytest -x -q``; a mutant whose tests still pass *survives*. The run is bounded: after
``--max-minutes`` no new mutant starts (the rest are reported as not run), and a mutant
whose tests run longer than ``--timeout-factor`` times the unmutated run is stopped and
counted as killed (an endless loop is a detected fault).

``--fast-first EXPR`` runs each mutant's tests in two phases with the same verdict as one
full run: first the tests selected by ``-k EXPR`` (the quick closed-form checks), and only
if they all pass, the rest (the slow learning and conformance tests). Most mutants of the
mathematics die in the first phase, so only survivors pay for the slow tests. SIGINT or
SIGTERM stops the run and reports what ran.

Usage::

    python benchmarks/bench_mutation.py --module plugins/gmbench_methods/diffusion/ddpm.py
    python benchmarks/bench_mutation.py --module plugins/gmbench_methods/diffusion/ddpm.py --list
    python benchmarks/bench_mutation.py --module ... --lines 200-260 --json results/mutants.json
    python benchmarks/bench_mutation.py --module plugins/gmbench_methods/diffusion/ddpm.py \
        --fast-first "not learns and not smoke_run and not Conformance"

Results for the built-in modules, and why each survivor is harmless or which test kills
it, are in docs/mutation.md.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
              ast.Pow: ast.Mult, ast.FloorDiv: ast.Div}
CMPOP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
              ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
BOOLOP_SWAP = {ast.And: ast.Or, ast.Or: ast.And}
SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.FloorDiv: "//",
          ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
          ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.And: "and", ast.Or: "or"}


@dataclass
class Mutant:
    index: int
    line: int
    what: str  # e.g. "+ -> -" or "1000 -> 1001"
    original: str  # the source line, stripped
    mutated: str  # the same line after the change (first line of a multi-line change)
    status: str = "not run"  # killed | survived | timeout | not run
    seconds: float = 0.0
    failed_test: str = ""


# -- making mutants ------------------------------------------------------------------------------


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings, f-strings, annotations, raise statements."""
    skip: set[int] = set()

    def skip_all(node):
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                skip_all(body[0])
        if isinstance(node, (ast.JoinedStr, ast.Raise)):
            skip_all(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skip_all(node.returns)
            for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
                skip_all(arg.annotation)
            skip_all(node.args.vararg and node.args.vararg.annotation)
            skip_all(node.args.kwarg and node.args.kwarg.annotation)
        if isinstance(node, ast.AnnAssign):
            skip_all(node.annotation)
    return skip


def _variants(node: ast.AST):
    """(replacement node, description) pairs for one node."""
    if isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAP:
        new = copy.deepcopy(node)
        new.op = BINOP_SWAP[type(node.op)]()
        yield new, f"{SYMBOL[type(node.op)]} -> {SYMBOL[type(new.op)]}"
    elif isinstance(node, ast.AugAssign) and type(node.op) in BINOP_SWAP:
        new = copy.deepcopy(node)
        new.op = BINOP_SWAP[type(node.op)]()
        yield new, f"{SYMBOL[type(node.op)]}= -> {SYMBOL[type(new.op)]}="
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in CMPOP_SWAP:
                new = copy.deepcopy(node)
                new.ops[i] = CMPOP_SWAP[type(op)]()
                yield new, f"{SYMBOL[type(op)]} -> {SYMBOL[type(new.ops[i])]}"
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = BOOLOP_SWAP[type(node.op)]()
        yield new, f"{SYMBOL[type(node.op)]} -> {SYMBOL[type(new.op)]}"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
        yield copy.deepcopy(node.operand), "drop unary " + ("-" if isinstance(node.op, ast.USub) else "not")
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        yield ast.Constant(node.value + 1), f"{node.value!r} -> {node.value + 1!r}"


def _splice(source: bytes, node: ast.AST, text: str) -> bytes:
    """Replace ``node``'s exact source span (ast offsets are UTF-8 byte offsets) by ``text``."""
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    begin = starts[node.lineno - 1] + node.col_offset
    end = starts[node.end_lineno - 1] + node.end_col_offset
    return source[:begin] + text.encode() + source[end:]


def make_mutants(path: Path) -> list[tuple[Mutant, bytes]]:
    """Every mutant of the module at ``path``, in source order, with its full mutated source."""
    source = path.read_bytes()
    tree = ast.parse(source)
    skip = _skipped_nodes(tree)
    lines = source.decode().splitlines()
    out: list[tuple[Mutant, bytes]] = []
    nodes = sorted((n for n in ast.walk(tree) if hasattr(n, "lineno") and id(n) not in skip),
                   key=lambda n: (n.lineno, n.col_offset))
    for node in nodes:
        for new, what in _variants(node):
            # statements are replaced as they are; expressions in parentheses, so the
            # surrounding precedence cannot change what the mutant means
            text = ast.unparse(new) if isinstance(node, ast.stmt) else f"({ast.unparse(new)})"
            mutated = _splice(source, node, text)
            try:
                compile(mutated, str(path), "exec")
            except SyntaxError:
                continue
            line = mutated.decode().splitlines()[node.lineno - 1].strip()
            out.append((Mutant(len(out), node.lineno, what, lines[node.lineno - 1].strip(), line), mutated))
    return out


# -- running them ----------------------------------------------------------------------------------


def copy_tree(dest: Path) -> Path:
    """A copy of the working tree (not .git, not the virtual environment) to mutate in."""
    ignore = shutil.ignore_patterns(".git", ".venv", "venv", "*.egg-info", "__pycache__", ".pytest_cache",
                                    "results", "node_modules")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def test_env(tree: Path) -> dict:
    # The copy's packages come first on sys.path: the editable install's finder of the real
    # checkout is consulted only after the path entries. No bytecode is written, so a mutant
    # of the same size and mtime as the last one cannot be served from a stale .pyc.
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "plugins")]),
            "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def module_name(module: Path) -> str:
    rel = module.relative_to("plugins") if module.parts[0] == "plugins" else module
    return ".".join(rel.with_suffix("").parts)


def run_phases(tree: Path, tests: str, pytest_args: list[str], timeout: float, fast: str | None):
    """The verdict of ``pytest -x`` on the whole file, the ``fast`` selection first."""
    if not fast:
        return run_tests(tree, tests, pytest_args, timeout)
    status, s1, failed = run_tests(tree, tests, [*pytest_args, "-k", fast], timeout)
    if status != "survived":
        return status, s1, failed
    status, s2, failed = run_tests(tree, tests, [*pytest_args, "-k", f"not ({fast})"], max(1.0, timeout - s1))
    return status, s1 + s2, failed


def run_tests(tree: Path, tests: str, pytest_args: list[str], timeout: float) -> tuple[str, float, str]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *pytest_args, tests]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=test_env(tree), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0, ""
    seconds = time.monotonic() - t0
    failed = next((ln.split(" ", 1)[1].split(" - ")[0] for ln in proc.stdout.splitlines()
                   if ln.startswith(("FAILED ", "ERROR "))), "")
    if proc.returncode in (0, 5):  # 5: this phase selected no test
        return "survived", seconds, ""
    if proc.returncode in (1, 2):  # failures, or the module no longer imports/collects
        return "killed", seconds, failed
    raise RuntimeError(f"pytest exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def parse_lines(spec: str | None) -> tuple[int, int]:
    if not spec:
        return 1, 10**9
    lo, _, hi = spec.partition("-")
    return int(lo), int(hi or lo)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", required=True, help="the module to mutate, relative to the repository root")
    ap.add_argument("--tests", help="its test file (default: tests/test_<module name>.py)")
    ap.add_argument("--max-minutes", type=float, default=45.0, help="start no new mutant after this long")
    ap.add_argument("--timeout-factor", type=float, default=4.0, help="per-mutant limit, in unmutated test runs")
    ap.add_argument("--lines", help="only mutants on these source lines, e.g. 200-260")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--json", help="write every mutant and its outcome here")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. \"-m 'not slow'\"")
    ap.add_argument("--fast-first", metavar="EXPR", help="a pytest -k expression run first (see module doc)")
    args = ap.parse_args(argv)

    module = Path(args.module)
    if not (ROOT / module).is_file() or module.suffix != ".py":
        ap.error(f"--module {args.module}: no such Python file under {ROOT}")
    tests = args.tests or f"tests/test_{module.stem}.py"
    if not (ROOT / tests).is_file():
        ap.error(f"no test file {tests}; name it with --tests")
    lo, hi = parse_lines(args.lines)
    mutants = [(m, src) for m, src in make_mutants(ROOT / module) if lo <= m.line <= hi]
    if args.list:
        for m, _ in mutants:
            print(f"#{m.index:<4} line {m.line:<4} {m.what:<16} {m.mutated}")
        print(f"{len(mutants)} mutants")
        return 0

    pytest_args = args.pytest_args.split()

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started in the background, where SIGINT is ignored
    with tempfile.TemporaryDirectory(prefix="gmbench-mutation-") as tmp:
        tree = copy_tree(Path(tmp) / "tree")
        target = tree / module
        original = target.read_bytes()
        probe = subprocess.run([sys.executable, "-c", f"import {module_name(module)} as m; print(m.__file__)"],
                               cwd=tree, env=test_env(tree), capture_output=True, text=True)
        if not probe.stdout.strip().startswith(str(tree)):
            raise SystemExit(f"the tests would not import the copy's module: {probe.stdout or probe.stderr}")
        status, base_s, failed = run_phases(tree, tests, pytest_args, 3600, args.fast_first)
        if status != "survived":
            raise SystemExit(f"the unmutated tests do not pass ({failed or status}): fix them first")
        timeout = max(30.0, args.timeout_factor * base_s)
        print(f"{module}: {len(mutants)} mutants; {tests} takes {base_s:.1f}s unmutated, limit {timeout:.0f}s each",
              flush=True)
        deadline = time.monotonic() + 60 * args.max_minutes
        try:
            for m, mutated in mutants:
                if time.monotonic() > deadline:
                    break
                target.write_bytes(mutated)
                try:
                    m.status, m.seconds, m.failed_test = run_phases(tree, tests, pytest_args, timeout, args.fast_first)
                finally:
                    target.write_bytes(original)
                mark = "SURVIVED" if m.status == "survived" else m.status
                print(f"#{m.index:<4} line {m.line:<4} {m.what:<16} {mark:<8} {m.seconds:5.1f}s  {m.mutated}", flush=True)
        except KeyboardInterrupt:
            print("interrupted: reporting what ran", flush=True)

    counts = {s: sum(m.status == s for m, _ in mutants) for s in ("killed", "timeout", "survived", "not run")}
    tried = len(mutants) - counts["not run"]
    score = (counts["killed"] + counts["timeout"]) / tried if tried else float("nan")
    print(f"\n{module}: {len(mutants)} mutants, {tried} tried: {counts['killed']} killed, {counts['timeout']} timed out, "
          f"{counts['survived']} survived, {counts['not run']} not run; mutation score {score:.1%}")
    survivors = [m for m, _ in mutants if m.status == "survived"]
    if survivors:
        print("survivors:")
        for m in survivors:
            print(f"  line {m.line}: {m.what}: {m.original}  ->  {m.mutated}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"module": str(module), "tests": tests, "baseline_s": base_s,
                                               "counts": counts, "mutants": [asdict(m) for m, _ in mutants]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
