"""Name -> object registries that reject duplicates and wrong types."""

from __future__ import annotations

import difflib
from typing import Any, Generic, Iterator, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """A bad registration or an unknown name; the message is one line."""


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """Holds one kind of registered thing (methods, datasets, ...).

    Args:
        kind: human name of what is registered, for messages ("method").
        base: the class every entry must be (classes) or be an instance of.
        classes: True when entries are classes (methods, datasets) rather
            than instances (metrics, budgets).
    """

    def __init__(self, kind: str, base: type, classes: bool):
        self.kind = kind
        self.base = base
        self.classes = classes
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}

    def register(self, obj: Any, origin: str = "") -> None:
        ok = (isinstance(obj, type) and issubclass(obj, self.base)) if self.classes else isinstance(obj, self.base)
        if not ok:
            want = f"a subclass of {self.base.__name__}" if self.classes else f"an instance of {self.base.__name__}"
            raise RegistryError(f"cannot register {obj!r} as a {self.kind}: expected {want}")
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistryError(f"cannot register {obj!r} as a {self.kind}: it has no 'name'")
        if name in self._items:
            raise RegistryError(
                f"{self.kind} {name!r} registered twice (by {self._origin[name] or '?'} and {origin or '?'}); rename one"
            )
        self._items[name] = obj
        self._origin[name] = origin

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, self._items)} Known: {known}"
            ) from None

    def origin(self, name: str) -> str:
        return self._origin.get(name, "")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def select(self, spec: str | list[str] | None) -> list[str]:
        """Resolve ``all`` / ``a,b`` / a list into validated names."""
        if spec is None or spec == "all" or spec == ["all"]:
            return self.names()
        names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
        names = [n for n in names if n]
        if not names:
            raise RegistryError(f"no {self.kind} given: pass 'all' or comma-separated names")
        for n in names:
            self.get(n)
        return names
