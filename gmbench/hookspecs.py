"""Every hook of gmbench, in one place.

A plugin is any module or object with functions named like these hooks and
decorated with ``gmbench.hookimpl``. Built-in methods and third-party packages
are loaded the same way: through the ``gmbench`` entry-point group. An
implementation may accept any subset of a hook's arguments, so hooks can grow
new arguments without breaking existing plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from gmbench.records import RunSpec

PROJECT = "gmbench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# A ``register`` callable takes the object to register; its name comes from
# the object's ``name`` attribute. It raises RegistryError on a duplicate name
# or a wrong type.
Register = Callable[[Any], None]


# -- registration ------------------------------------------------------------


@hookspec
def gmbench_register_methods(register: Register) -> None:
    """Register method classes (subclasses of :class:`gmbench.method.Method`).

    Called once per plugin manager when the method registry is first built.
    Call ``register(MethodClass)`` once per method. Return value is ignored.
    """


@hookspec
def gmbench_register_datasets(register: Register) -> None:
    """Register dataset classes (subclasses of :class:`gmbench.data.base.Dataset`).

    Called once when the dataset registry is built. The class must be
    constructible with no arguments besides ``data_seed``.
    """


@hookspec
def gmbench_register_metrics(register: Register) -> None:
    """Register metric instances (subclasses of :class:`gmbench.metrics.base.Metric`).

    Called once when the metric registry is built. Each metric declares the
    modalities it applies to, its outputs with their directions, and a version.
    """


@hookspec
def gmbench_register_budgets(register: Register) -> None:
    """Register compute budgets (:class:`gmbench.budget.Budget` instances).

    Called once when the budget registry is built.
    """


@hookspec
def gmbench_register_feature_extractors(register: Register) -> None:
    """Register image feature extractors for FID-style metrics.

    ``register`` takes an object with a ``name`` attribute (see
    :mod:`gmbench.metrics` for the extractor contract). Called once when the
    extractor registry is built.
    """


@hookspec
def gmbench_register_claims(register: Register) -> None:
    """Register the checkable claims of a method's paper (:class:`gmbench.claims.PaperClaim` instances).

    Called once when the claim registry is built (by ``gmbench claims``). A
    claim is an ordering, a tie or a trend across NFE between cells of
    method x sampler x NFE x metric, with its paper and table; names are unique.
    """


# -- observation ---------------------------------------------------------------


@hookspec
def gmbench_run_start(spec: RunSpec) -> None:
    """Called just before a run starts (training or loading). For loggers.

    An exception raised here is reported as a warning and does not fail the run.
    """


@hookspec
def gmbench_run_finish(spec: RunSpec, record: dict) -> None:
    """Called after a run's record has been written, ``ok`` or ``failed``.

    ``record`` is the dict that was written; do not mutate it. An exception
    raised here is reported as a warning and does not fail the run.
    """
