"""Conformance kit: one pytest suite that every method plugin runs.

Subclass :class:`MethodConformance` in your plugin's tests and name the method::

    from gmbench.testing import MethodConformance
    from gmbench_mymethod import MyMethod

    class TestMyMethod(MethodConformance):
        method = MyMethod          # the class, or its registered name ("mymethod")
        dataset = "8gaussians"     # optional: default is an embedded set of its first modality

pytest then runs the contract checks below on that method (built-in methods
and third-party plugins run the same suite, as diffusers' schedulers share
``SchedulerCommonTest``). The suite is cheap: a ``tiny`` model, a few hundred
training examples and a budget sized to a few steps per stage (measured from
one probe step, so it fits any method), trained once per class.

Checks:

* class attributes: name, family, arXiv id, modalities, likelihood label;
* samplers declared (unique names, sensible NFE), ``describe()`` is JSON;
* stages: budget shares sum to 1, optimizers name real modules with parameters;
* sample shapes, dtypes and values for every sampler;
* budget obedience: every FLOP spent during training (also work the host's
  meter does not see, e.g. in ``on_step_end``) fits the budget;
* determinism: the same seed gives the same samples, twice from one model and
  after training again;
* likelihood: finite values of shape ``(N,)`` when the method declares
  ``exact`` or ``bound``, ``NotImplementedError`` when it declares ``none``;
* checkpoints: state_dict -> safetensors file -> a fresh model gives identical samples.

Override a class attribute to adapt the suite (``hparams``, ``train_steps``,
``batch_size``...). This module imports pytest: it is for tests only.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gmbench.budget import Budget, count_flops
from gmbench.conditioning import check_conditioning, draw_samples
from gmbench.data import MODALITIES, make_dataset
from gmbench.method import LIKELIHOOD_KINDS, Method, OptimizerSpec, SamplerInfo, Stage, validate_method_class
from gmbench.metrics.base import MetricError, check_samples

#: dataset used when a conformance class names none, by the method's first modality
DEFAULT_DATASETS = {"toy2d": "8gaussians", "image": "digits", "text": "synthlang"}
ARXIV_ID = re.compile(r"\d{4}\.\d{4,5}(v\d+)?")
METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass
class Setup:
    """What the suite resolved from the class attributes (one per test class)."""

    method_cls: type
    dataset: Any
    budget: Budget | None  # None when the probe step failed (see probe_error)
    probe_error: str
    train_x: torch.Tensor
    test_x: torch.Tensor
    settings: list  # (sampler name, nfe) pairs to sample with
    build: Any  # seed -> fresh Method instance
    train_y: torch.Tensor | None = None  # the training labels, where the dataset has them


@dataclass
class Trained:
    method: Method
    reports: list
    counted_flops: float  # every FLOP of training, counted from outside the host's meter


class MethodConformance:
    """Base class of a method's conformance tests; set ``method`` (and optionally more)."""

    #: the Method subclass, or the name it is registered under
    method: ClassVar[Any] = None
    #: dataset name (``name`` or ``name:arg``); None: an embedded set of the method's first modality
    dataset: ClassVar[str | None] = None
    #: extra plugin objects registered before the name lookup (e.g. your plugin module)
    plugins: ClassVar[tuple] = ()
    #: also load installed plugins (the ``gmbench`` entry-point group) for the lookup
    load_entrypoints: ClassVar[bool] = True
    #: keyword arguments for the method's constructor
    hparams: ClassVar[dict] = {}
    model_size: ClassVar[str] = "tiny"
    seed: ClassVar[int] = 0
    #: training steps per stage the budget is sized for (at least this many are taken)
    train_steps: ClassVar[int] = 4
    train_examples: ClassVar[int] = 512
    batch_size: ClassVar[int] = 32
    n_samples: ClassVar[int] = 16
    #: NFE used for samplers whose NFE is adjustable
    nfe: ClassVar[int] = 2
    #: wall-clock guard of one training run, seconds: against a hang, not a budget (the FLOP
    #: budget of a few steps ends training). Generous so that no verdict depends on machine speed:
    #: a run cut by it trains fewer steps, and the determinism check would then compare unequal runs.
    max_seconds: ClassVar[float] = 900.0

    # -- fixtures -------------------------------------------------------------------------

    # Built once per test class and cached by class (rather than class-scoped
    # fixture methods, which pytest is deprecating and older versions treat differently).

    @pytest.fixture
    def conformance_setup(self) -> Setup:
        return _once(type(self), "setup", lambda: _setup(type(self)))

    @pytest.fixture
    def conformance_trained(self, conformance_setup) -> Trained:
        def train_once():
            if conformance_setup.budget is None:
                pytest.fail(f"a probe training step failed, so the method cannot be trained: {conformance_setup.probe_error}")
            return _train(conformance_setup, self.seed, self.max_seconds)

        return _once(type(self), "trained", train_once)

    # -- the contract ---------------------------------------------------------------------

    def test_class_attributes(self, conformance_setup):
        cls = conformance_setup.method_cls
        validate_method_class(cls)
        assert isinstance(cls.name, str) and METHOD_NAME.fullmatch(cls.name), (
            f"method name {cls.name!r}: use letters, digits, '.', '_', '-' (it appears in file names and tables)")
        assert isinstance(cls.family, str) and cls.family.strip(), "family must be a non-empty string"
        assert isinstance(cls.paper, str) and ARXIV_ID.fullmatch(cls.paper), (
            f"paper {cls.paper!r} must be an arXiv id like '2006.11239'")
        assert isinstance(cls.modalities, tuple) and cls.modalities, "modalities must be a non-empty tuple"
        unknown = [m for m in cls.modalities if m not in MODALITIES]
        assert not unknown, f"unknown modalities {unknown}; known: {MODALITIES}"
        assert cls.likelihood in LIKELIHOOD_KINDS, f"likelihood must be one of {LIKELIHOOD_KINDS}"
        json.dumps(cls.describe())

    def test_samplers_declared(self, conformance_setup):
        method = conformance_setup.build(self.seed)
        samplers = method.samplers
        assert isinstance(samplers, tuple) and samplers, "samplers must be a non-empty tuple of SamplerInfo"
        names = [s.name for s in samplers]
        assert len(set(names)) == len(names), f"sampler names repeat: {names}"
        for s in samplers:
            assert isinstance(s, SamplerInfo), f"{s!r} is not a SamplerInfo"
            assert isinstance(s.default_nfe, int) and s.default_nfe >= 1, f"sampler {s.name!r}: default_nfe must be an int >= 1"
            assert method.sampler(s.name) is s

    def test_stages(self, conformance_setup):
        method = conformance_setup.build(self.seed)
        modules = method.modules()
        assert isinstance(modules, dict) and modules, "modules() must return a non-empty dict of nn.Module"
        for mname, mod in modules.items():
            assert isinstance(mod, torch.nn.Module), f"modules()[{mname!r}] is not an nn.Module"
        stages = method.stages()
        assert stages, "stages() returned no stage"
        assert all(isinstance(s, Stage) for s in stages), "stages() must return Stage objects"
        names = [s.name for s in stages]
        assert len(set(names)) == len(names), f"stage names repeat: {names}"
        total = sum(s.budget_share for s in stages)
        assert math.isclose(total, 1.0, abs_tol=1e-6), f"stage budget shares sum to {total}, not 1"
        for stage in stages:
            assert stage.budget_share > 0, f"stage {stage.name!r} has budget share {stage.budget_share}"
            assert stage.optimizers, f"stage {stage.name!r} has no optimizer"
            opt_names = [o.name for o in stage.optimizers]
            assert len(set(opt_names)) == len(opt_names), f"stage {stage.name!r}: optimizer names repeat"
            for opt in stage.optimizers:
                assert isinstance(opt, OptimizerSpec), f"stage {stage.name!r}: {opt!r} is not an OptimizerSpec"
                assert opt.modules, f"optimizer {opt.name!r} trains no module"
                for mname in opt.modules:
                    assert mname in modules, f"optimizer {opt.name!r} names unknown module {mname!r} (modules: {', '.join(modules)})"
                params = [p for m in opt.modules for p in modules[m].parameters() if p.requires_grad]
                assert params, f"optimizer {opt.name!r}: its modules have no trainable parameter"

    def test_sample_shapes(self, conformance_setup, conformance_trained):
        spec = conformance_setup.dataset.spec()
        method = conformance_trained.method
        for sampler, nfe in conformance_setup.settings:
            with torch.no_grad():
                x = draw_samples(method, self.n_samples, sampler, nfe, _generator(method, 1))
            assert isinstance(x, torch.Tensor), f"sampler {sampler!r} returned {type(x).__name__}, not a tensor"
            assert tuple(x.shape) == (self.n_samples, *spec.shape), (
                f"sampler {sampler!r} at NFE {nfe}: shape {tuple(x.shape)}, expected {(self.n_samples, *spec.shape)}")
            if spec.modality != "text":
                assert x.is_floating_point(), f"sampler {sampler!r} returned {x.dtype}, expected a float tensor"
            try:
                check_samples(x, conformance_setup.dataset)
            except MetricError as exc:
                pytest.fail(f"sampler {sampler!r} at NFE {nfe}: {exc}")

    def test_budget_obeyed(self, conformance_setup, conformance_trained):
        allowed = conformance_setup.budget.flops_for(conformance_setup.dataset.modality)
        for r in conformance_trained.reports:
            assert r.steps >= 1, f"stage {r.name!r} took no step"
            assert r.flops <= r.flops_allowed * (1 + 1e-9), f"stage {r.name!r} used {r.flops:.4g} of {r.flops_allowed:.4g} FLOPs"
        counted = conformance_trained.counted_flops
        assert counted <= allowed * (1 + 1e-6), (
            f"training did {counted:.4g} matrix-product FLOPs by an independent count (FlopCounterMode), the "
            f"budget allows {allowed:.4g}: the host's meter missed work; please report it")

    def test_sampling_is_deterministic(self, conformance_setup, conformance_trained):
        method = conformance_trained.method
        for sampler, nfe in conformance_setup.settings:
            with torch.no_grad():
                a = draw_samples(method, self.n_samples, sampler, nfe, _generator(method, 7))
                b = draw_samples(method, self.n_samples, sampler, nfe, _generator(method, 7))
            assert torch.equal(a, b), (
                f"sampler {sampler!r}: the same generator gave different samples; draw all randomness from `generator`")

    def test_training_is_deterministic(self, conformance_setup, conformance_trained):
        second = _train(conformance_setup, self.seed, self.max_seconds)
        cut = [r.stopped for t in (conformance_trained, second) for r in t.reports if r.stopped]
        assert not cut, (f"a training was cut by the kit's {self.max_seconds:g}s wall-clock guard, so the two runs "
                         f"differ in length and cannot be compared ({cut[0]}); raise max_seconds on a slow machine")
        again = second.method
        for sampler, nfe in conformance_setup.settings:
            with torch.no_grad():
                a = draw_samples(conformance_trained.method, self.n_samples, sampler, nfe, _generator(again, 7))
                b = draw_samples(again, self.n_samples, sampler, nfe, _generator(again, 7))
            assert torch.equal(a, b), (
                f"sampler {sampler!r}: two trainings from seed {self.seed} gave different samples; "
                "use the host's generator and torch's seeded RNG, never an unseeded source")

    def test_likelihood(self, conformance_setup, conformance_trained):
        method = conformance_trained.method
        x = conformance_setup.test_x[: self.n_samples].to(method.device)
        if method.likelihood == "none":
            with pytest.raises(NotImplementedError):
                method.log_likelihood(x, _generator(method, 3))
            return
        with torch.no_grad():
            ll = method.log_likelihood(x, _generator(method, 3))
        assert isinstance(ll, torch.Tensor), f"log_likelihood returned {type(ll).__name__}, not a tensor"
        assert tuple(ll.shape) == (len(x),), f"log_likelihood returned shape {tuple(ll.shape)}, expected ({len(x)},)"
        assert ll.is_floating_point() and torch.isfinite(ll).all(), "log_likelihood returned NaN, inf or integers"

    def test_checkpoint_round_trip(self, conformance_setup, conformance_trained, tmp_path):
        from safetensors.torch import load_file, save_file

        method = conformance_trained.method
        state = method.state_dict()
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        assert not bad, f"state_dict holds non-tensors {bad}: safetensors stores tensors only"
        path = tmp_path / "method.safetensors"
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(path))
        fresh = conformance_setup.build(self.seed + 1).to(method.device)
        fresh.load_state_dict(load_file(str(path), device=str(method.device)))
        fresh.train(False)
        for sampler, nfe in conformance_setup.settings:
            with torch.no_grad():
                a = draw_samples(method, self.n_samples, sampler, nfe, _generator(method, 11))
                b = draw_samples(fresh, self.n_samples, sampler, nfe, _generator(fresh, 11))
            assert torch.equal(a, b), (
                f"sampler {sampler!r}: samples differ after a safetensors round trip; state that sampling "
                "depends on must live in the modules' parameters or buffers")


# -- helpers ---------------------------------------------------------------------------------


_CACHE: dict[tuple[type, str], tuple[bool, Any, Any]] = {}


def _once(cls: type, what: str, make):
    """``make()`` once per (class, what); a failure is cached and raised again."""
    key = (cls, what)
    if key not in _CACHE:
        try:
            _CACHE[key] = (True, make(), None)
        except BaseException as exc:  # noqa: BLE001 - pytest's Failed and Skipped too
            if isinstance(exc, KeyboardInterrupt):
                raise
            _CACHE[key] = (False, exc, exc.__traceback__)
    ok, value, tb = _CACHE[key]
    if not ok:
        raise value.with_traceback(tb)
    return value


def _generator(method: Method, seed: int) -> torch.Generator:
    return torch.Generator(device=method.device).manual_seed(seed)


def _setup(cls) -> Setup:
    from gmbench.plugins import Registries, make_plugin_manager

    if cls.method is None:
        pytest.fail(f"{cls.__name__}: set `method = YourMethodClass` (or its registered name)")
    reg = Registries(make_plugin_manager(extra_plugins=tuple(cls.plugins), load_entrypoints=cls.load_entrypoints))
    if isinstance(cls.method, str):
        method_cls = reg.methods.get(cls.method)
    elif isinstance(cls.method, type) and issubclass(cls.method, Method):
        method_cls = cls.method
    else:
        pytest.fail(f"{cls.__name__}.method must be a Method subclass or a registered name, not {cls.method!r}")
    modality = method_cls.modalities[0] if getattr(method_cls, "modalities", None) else "toy2d"
    dataset = make_dataset(reg.datasets, cls.dataset or DEFAULT_DATASETS.get(modality, "8gaussians"))
    data_spec = dataset.spec()
    train_split = dataset.split("train")
    train_x = train_split.x[: cls.train_examples]
    train_y = train_split.y[: cls.train_examples] if train_split.y is not None else None
    test_x = dataset.split("test").x

    def build(seed: int) -> Method:
        torch.manual_seed(seed)  # network initialisation, as the host does
        return method_cls(data_spec, model_size=cls.model_size, **dict(cls.hparams))

    settings = [(s.name, cls.nfe if s.adjustable_nfe else s.default_nfe) for s in getattr(method_cls, "samplers", ())]
    try:
        flops = _budget_flops(build(cls.seed), train_x, cls.batch_size, cls.train_steps, cls.seed, train_y)
    except Exception as exc:  # noqa: BLE001 - reported by the tests that need training; the rest still run
        return Setup(method_cls, dataset, None, f"{type(exc).__name__}: {exc}", train_x, test_x, settings, build,
                     train_y)
    budget = Budget(
        name="conformance",
        train_flops={dataset.modality: flops},
        batch_size={dataset.modality: cls.batch_size},
        wall_clock_s=cls.max_seconds,
        model_size=cls.model_size,
        eval_samples={dataset.modality: cls.n_samples},
        nfe_grid=(cls.nfe,),
        eval_timeout_s=cls.max_seconds,
        description="conformance kit: a few steps per stage",
    )
    return Setup(method_cls, dataset, budget, "", train_x, test_x, settings, build, train_y)


def _budget_flops(method: Method, train_x: torch.Tensor, batch_size: int, steps: int, seed: int,
                  train_y: torch.Tensor | None = None) -> float:
    """FLOPs for about ``steps`` steps of every stage, from one probe step per stage.

    Each stage gets ``share * total``; the total is chosen so that the stage
    with the largest (preparation + steps x step cost) / share still fits.
    """
    from gmbench.training import _Step  # the host's own step, so the probe costs what training costs

    check_conditioning(method, train_y, train_x.shape[0])
    g = torch.Generator().manual_seed(seed)
    data, need = train_x, 0.0
    method.train(True)
    for stage in method.stages():
        new, prep = count_flops(method.on_stage_start, stage.name, data, g)
        if new is not None:
            data = new
        step = _Step(method, stage.optimizers, method.device)
        given = {"labels": train_y[:batch_size]} if method.class_conditional else {}
        _, cost = count_flops(lambda: step(method.training_step(stage.name, data[:batch_size], 0, **given), 0))
        method.on_step_end(stage.name, 0)
        need = max(need, (prep + steps * cost) / max(stage.budget_share, 1e-9))
    return need * 1.01 + 1.0


def _train(setup: Setup, seed: int, max_seconds: float) -> Trained:
    from gmbench.training import train

    method = setup.build(seed)
    g = torch.Generator().manual_seed(seed)
    with FlopCounterMode(display=False) as counter:
        reports = train(method, setup.train_x, setup.budget, setup.dataset.modality, g,
                        deadline=time.monotonic() + max_seconds, labels=setup.train_y)
    return Trained(method, reports, float(counter.get_total_flops()))
