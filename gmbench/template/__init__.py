"""The plugin template behind ``gmbench new-plugin NAME``.

It renders the files under ``files/`` into a new, installable package
``gmbench-NAME``: a pyproject with the ``gmbench`` entry point, a module with
a working minimal method (NICE: additive coupling layers, exact likelihood), a
test that runs the conformance kit, a README and a CI workflow. Placeholders
are ``__NAME__`` (method name), ``__DIST__`` (distribution), ``__MODULE__``
(import name), ``__CLASS__`` (method class) and ``__GMBENCH_VERSION__``;
plain ``str.replace`` is used because the workflow's ``${{ }}`` and Python's
braces would clash with any format syntax.
"""

from __future__ import annotations

import re
from pathlib import Path

FILES = Path(__file__).resolve().parent / "files"

#: template file -> path in the generated package (``__MODULE__`` is replaced there too)
LAYOUT = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "gitignore.tmpl": ".gitignore",
    "init.py.tmpl": "src/__MODULE__/__init__.py",
    "method.py.tmpl": "src/__MODULE__/method.py",
    "test_method.py.tmpl": "tests/test_method.py",
    "github-workflow.yml.tmpl": ".github/workflows/gmbench.yml",
}

NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


class TemplateError(ValueError):
    """A bad plugin name or target directory; one line."""


def placeholders(name: str) -> dict[str, str]:
    """The values of the placeholders for method ``name`` (lowercase words joined by '-')."""
    from gmbench import __version__

    if not NAME.fullmatch(name):
        raise TemplateError(
            f"bad plugin name {name!r}: use lowercase letters and digits, words joined by '-' (e.g. 'my-flow')"
        )
    words = name.split("-")
    return {
        "__NAME__": name,
        "__DIST__": f"gmbench-{name}",
        "__MODULE__": "gmbench_" + "_".join(words),
        "__CLASS__": "".join(w.capitalize() for w in words),
        "__GMBENCH_VERSION__": __version__,
    }


def render_text(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def package_root(out_dir: str | Path, dist: str) -> Path:
    """Where the package goes: ``out_dir/gmbench-NAME``, or ``out_dir`` itself when it is
    already named ``gmbench-NAME`` (``--out ./gmbench-foo`` must not give
    ``gmbench-foo/gmbench-foo``)."""
    out = Path(out_dir)
    return out if out.resolve().name == dist else out / dist


def render(name: str, out_dir: str | Path) -> Path:
    """Write the package for method ``name`` into ``out_dir/gmbench-NAME`` (see
    :func:`package_root`); return that path."""
    values = placeholders(name)
    root = package_root(out_dir, values["__DIST__"])
    if root.exists() and any(root.iterdir()):
        raise TemplateError(f"{root} already exists and is not empty; choose another --out or name")
    missing = [t for t in LAYOUT if not (FILES / t).is_file()]
    if missing:
        raise TemplateError(f"the gmbench installation lacks its plugin template files ({', '.join(missing)}); reinstall gmbench")
    for template, target in LAYOUT.items():
        path = root / render_text(target, values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_text((FILES / template).read_text(), values))
    return root
