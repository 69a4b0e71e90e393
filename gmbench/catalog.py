"""What the listing commands print, without importing torch on every call.

``gmbench plugins|datasets|budgets list`` need every method, dataset and budget
of every installed plugin, and a plugin's module imports torch (seconds). The
answer only changes when the installed plugins change, so the first listing
builds it from the live registries and stores it; later listings read the
stored copy (a fraction of a second, no torch import).

The stored copy is keyed by everything it depends on: gmbench's version, the
Python version, ``GMBENCH_DISABLE_EXTERNAL_PLUGINS``, every entry point of the
``gmbench`` group (name, target, distribution, version), and the size and
modification time of every ``.py`` file in gmbench and in each plugin's
top-level package (so an edited plugin in an editable install is re-read). A
key mismatch rebuilds; an unreadable or unwritable cache only costs the
rebuild. Warnings raised while building (a plugin that failed to import) are
stored with the listing and repeated on every read, so the cache never hides a
broken plugin.

Location: ``$GMBENCH_CACHE_DIR`` or ``~/.cache/gmbench``, file ``catalog.json``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

CATALOG_VERSION = "1"
CATALOG_FILE = "catalog.json"


def cache_dir() -> Path:
    return Path(os.environ.get("GMBENCH_CACHE_DIR") or Path.home() / ".cache" / "gmbench")


def _package_dirs() -> list[Path]:
    """gmbench's own package and each entry point's top-level package, found without importing them."""
    import gmbench

    dirs = [Path(gmbench.__file__).resolve().parent]
    for ep in md.entry_points(group="gmbench"):
        top = ep.value.split(":")[0].split(".")[0]
        try:
            spec = importlib.util.find_spec(top)  # a top-level name: located, not executed
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations:
            dirs.extend(Path(p).resolve() for p in spec.submodule_search_locations)
        elif spec.origin:
            dirs.append(Path(spec.origin).resolve())
    return sorted(set(dirs))


def _file_stamps(paths: list[Path]) -> list[tuple[str, int, int]]:
    stamps = []
    for root in paths:
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            stamps.append((str(f), st.st_size, st.st_mtime_ns))
    return stamps


def catalog_key(paths: list[Path] | None = None) -> str:
    """A digest of everything the listings depend on (see the module doc)."""
    from gmbench import __version__

    eps = sorted((ep.name, ep.value, ep.dist.name if ep.dist else "", ep.dist.version if ep.dist else "")
                 for ep in md.entry_points(group="gmbench"))
    parts = {
        "catalog": CATALOG_VERSION,
        "gmbench": __version__,
        "python": list(sys.version_info[:3]),
        "only_own": os.environ.get("GMBENCH_DISABLE_EXTERNAL_PLUGINS") == "1",
        "entry_points": eps,
        "files": _file_stamps(_package_dirs() if paths is None else paths),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def load_catalog(build: Callable[[], dict]) -> dict:
    """The stored listings if their key matches, else ``build()``'s, stored for next time.

    ``build`` returns a JSON-serialisable dict; warnings it raises are kept with it.
    """
    key = catalog_key()
    path = cache_dir() / CATALOG_FILE
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            for message in stored.get("warnings", []):
                warnings.warn(message, stacklevel=2)
            return stored["listings"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass  # missing, unreadable or from another version: rebuild
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        listings = build()
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    for message in messages:
        warnings.warn(message, stacklevel=2)
    _store(path, {"key": key, "warnings": messages, "listings": listings})
    return listings


def _store(path: Path, payload: dict) -> None:
    """Write atomically; a cache that cannot be written is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".catalog-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, default=repr)  # key order kept: it is the tables' column order
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)  # type: ignore[possibly-undefined]
        except (OSError, NameError):
            pass
