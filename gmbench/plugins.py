"""Plugin-manager factory and the registries it fills.

Nothing is loaded at import time. :func:`make_plugin_manager` builds a fresh
manager: gmbench's own built-in modules (datasets, metrics, budgets) are
registered first, then every module published under the ``gmbench`` entry-point
group — which is how the built-in *methods* are found too, exactly like a
third-party ``pip install gmbench-foo``. ``GMBENCH_DISABLE_EXTERNAL_PLUGINS=1``
keeps only gmbench's own distribution (useful for debugging a broken install).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import warnings
from dataclasses import dataclass, field
from functools import cached_property

import pluggy

from gmbench import hookspecs
from gmbench.registry import Registry, RegistryError

#: modules inside gmbench that are plugins themselves (pytest-style built-ins)
CORE_PLUGINS = (
    "gmbench.data.builtin",
    "gmbench.metrics.builtin",
    "gmbench.budget",
)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the distribution that published each plugin."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        #: plugin name -> (distribution name, version)
        self.distributions: dict[str, tuple[str, str]] = {}


def make_plugin_manager(extra_plugins: tuple = (), load_entrypoints: bool = True) -> PluginManager:
    """A fresh, fully loaded plugin manager.

    Args:
        extra_plugins: plugin objects registered after the built-ins (tests use
            this for throwaway plugins).
        load_entrypoints: load the ``gmbench`` entry-point group.
    """
    import importlib

    pm = PluginManager()
    for modname in CORE_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    if load_entrypoints:
        _load_entrypoints(pm)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


def _load_entrypoints(pm: PluginManager) -> None:
    only_own = os.environ.get("GMBENCH_DISABLE_EXTERNAL_PLUGINS") == "1"
    # gmbench's own entry points first, so a third-party plugin can never displace a built-in
    eps = sorted(md.entry_points(group=hookspecs.PROJECT), key=lambda e: (e.dist is None or e.dist.name != "gmbench"))
    for ep in eps:
        dist = ep.dist.name if ep.dist else ""
        if only_own and dist != "gmbench":
            continue
        if pm.is_blocked(ep.name):
            continue
        if pm.get_plugin(ep.name) is not None:
            owner = pm.distributions.get(ep.name, ("", ""))
            if owner[0] != dist:  # the same name from another distribution: refused, never a silent swap
                warnings.warn(
                    f"gmbench: plugin {ep.name!r} of {dist or '?'} {ep.dist.version if ep.dist else ''} is not loaded: "
                    f"the name is taken by {owner[0] or '?'} {owner[1]}; rename the entry point (and its method) in "
                    f"{dist or 'that package'}'s pyproject.toml", stacklevel=2)
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party package must not take the suite down
            warnings.warn(f"gmbench: plugin {ep.name!r} from {dist or '?'} failed to import: {exc}", stacklevel=2)
            continue
        pm.register(plugin, name=ep.name)
        pm.distributions[ep.name] = (dist, ep.dist.version if ep.dist else "")


def plugin_distribution(pm: PluginManager, plugin) -> tuple[str, str]:
    """(distribution, version) that published a registered plugin, or ('', '')."""
    name = pm.get_name(plugin) or ""
    if name in CORE_PLUGINS:
        return "gmbench", _gmbench_version()
    return pm.distributions.get(name, ("", ""))


def _gmbench_version() -> str:
    from gmbench import __version__

    return __version__


@dataclass
class Registries:
    """The registries of one plugin manager, each built on first use."""

    pm: PluginManager = field(default_factory=make_plugin_manager)

    def _build(self, kind: str, base: type, classes: bool, hookname: str) -> Registry:
        reg: Registry = Registry(kind, base, classes)
        hook = getattr(self.pm.hook, hookname)
        # gmbench's own hooks first: a third-party registration can never displace a built-in
        impls = sorted(hook.get_hookimpls(), key=lambda i: plugin_distribution(self.pm, i.plugin)[0] != "gmbench")
        for impl in impls:
            dist, version = plugin_distribution(self.pm, impl.plugin)
            origin = f"{dist} {version}".strip()  # "" for plugins registered at run time
            def call(register, _impl=impl):
                return _impl.function(**({"register": register} if "register" in _impl.argnames else {}))

            if dist in ("", "gmbench"):  # gmbench's own, or given in-process (tests, notebooks): errors raise
                call(lambda obj, _origin=origin: reg.register(obj, origin=_origin))
                continue
            # an installed third-party package: its mistakes cost its own entries, never the suite
            offered: list = []
            try:
                call(offered.append)
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"gmbench: plugin {origin} failed to register its {kind}s, none loaded: "
                              f"{type(exc).__name__}: {exc}", stacklevel=2)
                continue
            for obj in offered:
                name = getattr(obj, "name", None)
                if isinstance(name, str) and name in reg:
                    warnings.warn(f"gmbench: {kind} {name!r} of {origin} is not loaded: the name is taken by "
                                  f"{reg.origin(name) or '?'}; rename it in {dist}", stacklevel=2)
                    continue
                try:
                    reg.register(obj, origin=origin)
                except RegistryError as exc:
                    warnings.warn(f"gmbench: {exc} (from {origin}); not loaded", stacklevel=2)
        return reg

    @cached_property
    def methods(self) -> Registry:
        from gmbench.method import Method

        return self._build("method", Method, True, "gmbench_register_methods")

    @cached_property
    def datasets(self) -> Registry:
        from gmbench.data.base import Dataset

        return self._build("dataset", Dataset, True, "gmbench_register_datasets")

    @cached_property
    def metrics(self) -> Registry:
        from gmbench.metrics.base import Metric

        return self._build("metric", Metric, False, "gmbench_register_metrics")

    @cached_property
    def budgets(self) -> Registry:
        from gmbench.budget import Budget

        return self._build("budget", Budget, False, "gmbench_register_budgets")

    @cached_property
    def feature_extractors(self) -> Registry:
        return self._build("feature extractor", object, False, "gmbench_register_feature_extractors")

    @cached_property
    def claims(self) -> Registry:
        from gmbench.claims import PaperClaim

        return self._build("claim", PaperClaim, False, "gmbench_register_claims")

    def origin(self, kind: str, name: str) -> str:
        """'distribution version' that registered ``name`` of ``kind``."""
        reg = {"method": self.methods, "dataset": self.datasets, "metric": self.metrics, "budget": self.budgets}[kind]
        return reg.origin(name)
