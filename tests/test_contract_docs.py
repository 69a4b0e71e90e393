"""The promises of docs/plugins.md ("The contract in detail") and docs/backbones.md hold.

Each test builds a throwaway Method that records what the host hands it and trains it
through the host's own loop (`gmbench.training.train`) or evaluates it through
`gmbench.evaluate.evaluate`, then checks one documented sentence. The CLI promises of
the tutorial (`new-plugin --out`, `budgets list`) are checked here too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from gmbench.cli import main
from gmbench.data.base import DataSpec
from gmbench.data.toy2d import EightGaussians
from gmbench.method import Method, OptimizerSpec, SamplerInfo, Stage
from gmbench.training import StageReport, train
from tests.plugins.fake_methods import TINY_BUDGET

ROOT = Path(__file__).resolve().parents[1]
PLUGINS_DOC = (ROOT / "docs" / "plugins.md").read_text()
BACKBONES_DOC = (ROOT / "docs" / "backbones.md").read_text()
TOY = DataSpec(name="toy", modality="toy2d", shape=(2,))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Throwaway(Method):
    """The smallest method the host accepts; subclasses override what a test looks at."""

    name, family, paper = "throwaway", "test", "0000.00000"
    modalities = ("toy2d",)
    samplers = (SamplerInfo("direct", adjustable_nfe=False, default_nfe=1),)

    def __init__(self, data=TOY, model_size="tiny"):
        super().__init__(data, model_size)
        self.net = nn.Linear(2, 2)

    def modules(self):
        return {"net": self.net}

    def stages(self):
        return [Stage("fit", (OptimizerSpec("opt", ("net",)),))]

    def training_step(self, stage, batch, step):
        return {"opt": self.net(batch).pow(2).mean()}

    def sample(self, n, sampler, nfe, generator):
        return self.net(torch.randn(n, 2, generator=generator))


def train_toy(method: Method, x: torch.Tensor | None = None):
    x = torch.randn(200, 2, generator=gen(1)) if x is None else x
    return train(method, x, TINY_BUDGET, "toy2d", gen(2))


# -- on_stage_start -----------------------------------------------------------------------------


class ThreeStages(Throwaway):
    """a: trains on the split; b: replaces the data by 10 rows of 3 float64 columns; c: returns None."""

    NEW_ROWS = 10

    def __init__(self):
        super().__init__()
        self.nets = nn.ModuleDict({"a": nn.Linear(2, 1), "b": nn.Linear(3, 1).double(), "c": nn.Linear(3, 1).double()})
        self.received, self.batches, self.grad_enabled, self.training_mode = {}, {}, {}, {}

    def modules(self):
        return {name: net for name, net in self.nets.items()}

    def stages(self):
        return [Stage(s, (OptimizerSpec(s, (s,)),), budget_share=1 / 3) for s in "abc"]

    def on_stage_start(self, stage, train_x, generator):
        self.received[stage] = train_x.clone()
        self.grad_enabled[stage] = torch.is_grad_enabled()
        self.training_mode[stage] = self.nets[stage].training
        if stage == "b":
            with torch.no_grad():
                return torch.arange(self.NEW_ROWS * 3, dtype=torch.float64).reshape(self.NEW_ROWS, 3)
        return None

    def training_step(self, stage, batch, step):
        self.batches.setdefault(stage, []).append(batch.clone())
        return {stage: self.nets[stage](batch).pow(2).mean()}


def rows_of(batch: torch.Tensor, data: torch.Tensor) -> bool:
    """Every row of ``batch`` is a row of ``data``."""
    return bool((batch[:, None, :] == data[None, :, :]).all(-1).any(1).all())


def test_on_stage_start_data_replaces_the_training_data_for_this_and_later_stages():
    method = ThreeStages()
    x = torch.randn(200, 2, generator=gen(1))
    reports = train_toy(method, x)
    assert [r.name for r in reports] == ["a", "b", "c"] and all(r.steps >= 2 for r in reports)
    new = method.received["c"]
    # the first stage gets the split; a later stage gets what the last replacement returned
    assert torch.equal(method.received["a"], x) and torch.equal(method.received["b"], x)
    assert torch.equal(new, torch.arange(30, dtype=torch.float64).reshape(10, 3))
    # batches: the current data's rows, its shape and dtype unchanged, min(batch_size, rows) rows
    assert all(b.shape == (TINY_BUDGET.batch_size["toy2d"], 2) and rows_of(b, x) for b in method.batches["a"])
    for stage in ("b", "c"):
        assert all(b.shape == (ThreeStages.NEW_ROWS, 3) and b.dtype == torch.float64 and rows_of(b, new)
                   for b in method.batches[stage])
    # it runs in training mode with autograd on
    assert all(method.grad_enabled.values()) and all(method.training_mode.values())
    # and its work is charged to the stage
    # (stage b copies its split and writes the new rows: at least one operation per value)
    assert reports[1].prepare_flops >= x.numel() + ThreeStages.NEW_ROWS * 3
    assert reports[1].flops >= reports[1].prepare_flops
    assert reports[1].flops <= reports[1].flops_allowed * (1 + 1e-9)


class EncodesWithHistory(Throwaway):
    """Returns latents that still carry autograd history (no torch.no_grad())."""

    def __init__(self):
        super().__init__()
        self.enc, self.prior = nn.Linear(2, 2), nn.Linear(2, 2)

    def modules(self):
        return {"enc": self.enc, "prior": self.prior}

    def stages(self):
        return [Stage("ae", (OptimizerSpec("ae", ("enc",)),), 0.5), Stage("latent", (OptimizerSpec("p", ("prior",)),), 0.5)]

    def on_stage_start(self, stage, train_x, generator):
        return self.enc(train_x) if stage == "latent" else None

    def training_step(self, stage, batch, step):
        net = self.enc if stage == "ae" else self.prior
        return {"ae" if stage == "ae" else "p": net(batch).pow(2).mean()}


def test_stage_data_with_autograd_history_fails_the_second_step():
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        train_toy(EncodesWithHistory())


# -- losses and gradients -----------------------------------------------------------------------


class GradientRecorder:
    """The gradient of every parameter of each optimizer at the moment it steps."""

    def __init__(self):
        self.at_step: list[list[torch.Tensor | None]] = []

    def __enter__(self):
        def hook(optimizer, args, kwargs):
            self.at_step.append([None if p.grad is None else p.grad.clone()
                                 for g in optimizer.param_groups for p in g["params"]])
        self.handle = register_optimizer_step_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class TwoPlayers(Throwaway):
    """Two optimizers whose losses both flow through both modules (no detach anywhere).

    Before yielding a loss it computes, independently of the host, the gradient that loss
    alone has with respect to its own optimizer's parameters: what the host must step with.
    """

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.g, self.d = nn.Linear(2, 2), nn.Linear(2, 1)
        self.expected: list[list[torch.Tensor]] = []
        self.d_weight_seen_by_g: list[torch.Tensor] = []
        self.d_weight_after_d_step: list[torch.Tensor] = []

    def modules(self):
        return {"g": self.g, "d": self.d}

    def stages(self):
        return [Stage("play", (OptimizerSpec("d", ("d",), lr=0.1), OptimizerSpec("g", ("g",), lr=0.1)))]

    def _own_grad(self, loss, module):
        return [g.clone() for g in torch.autograd.grad(loss, list(module.parameters()), retain_graph=True)]

    def training_step(self, stage, batch, step):
        if self.form == "generator":
            return self._alternating(batch)
        fake = self.g(batch)
        d_loss = self.d(batch + 1).pow(2).mean() + self.d(fake).pow(2).mean()  # flows into g too
        g_loss = (self.g(batch) - 1).pow(2).mean()  # touches only g's parameters
        self.expected += [self._own_grad(d_loss, self.d), self._own_grad(g_loss, self.g)]
        return {"d": d_loss, "g": g_loss}

    def _alternating(self, batch):
        d_loss = self.d(batch + 1).pow(2).mean() + self.d(self.g(batch)).pow(2).mean()  # flows into g
        self.expected.append(self._own_grad(d_loss, self.d))
        yield "d", d_loss
        self.d_weight_after_d_step.append(self.d.weight.detach().clone())
        g_loss = -self.d(self.g(batch)).mean()  # flows into d
        self.d_weight_seen_by_g.append(self.d.weight.detach().clone())
        self.expected.append(self._own_grad(g_loss, self.g))
        yield "g", g_loss


@pytest.mark.parametrize("form", ["generator", "mapping"])
def test_each_optimizer_steps_with_exactly_its_own_losss_gradient(form):
    method = TwoPlayers(form)
    with GradientRecorder() as rec:
        (report,) = train_toy(method)
    assert report.steps >= 3 and len(rec.at_step) == len(method.expected) == 2 * report.steps
    for got, want in zip(rec.at_step, method.expected):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_generator_form_computes_the_next_loss_after_the_step():
    method = TwoPlayers("generator")
    train_toy(method)
    for before, seen in zip(method.d_weight_after_d_step, method.d_weight_seen_by_g):
        assert torch.equal(before, seen)
    # the discriminator's weights moved between its steps: the generator saw updated ones
    assert not torch.equal(method.d_weight_seen_by_g[0], method.d_weight_seen_by_g[1])


class SharedGraphMapping(TwoPlayers):
    """A GAN written in the mapping form: the generator loss goes through the discriminator."""

    def training_step(self, stage, batch, step):
        fake = self.g(batch)
        return {"d": self.d(fake.detach()).pow(2).mean(), "g": -self.d(fake).mean()}


def test_mapping_form_cannot_back_propagate_through_parameters_already_stepped():
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        train_toy(SharedGraphMapping("mapping"))


class WithUnownedModule(Throwaway):
    """`frozen` is used in the loss but no optimizer of the stage owns it."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(2, 2)
        self.grad_norms: list[float] = []

    def modules(self):
        return {"net": self.net, "frozen": self.frozen}

    def training_step(self, stage, batch, step):
        g = self.frozen.weight.grad
        self.grad_norms.append(0.0 if g is None else float(g.norm()))
        return {"opt": self.net(self.frozen(batch)).pow(2).mean()}


def test_gradients_of_parameters_no_optimizer_owns_accumulate():
    method = WithUnownedModule()
    (report,) = train_toy(method)
    assert report.steps >= 4 and method.grad_norms[0] == 0.0
    assert method.frozen.weight.grad is not None
    # never zeroed: the norm keeps growing as step after step adds to it
    assert method.grad_norms[-1] > 2 * method.grad_norms[1] > 0


# -- evaluation: no autograd --------------------------------------------------------------------


class OdeLikelihood(Throwaway):
    """A likelihood through an autograd divergence (the change of variables of x -> A x + b)."""

    likelihood = "exact"

    def __init__(self):
        super().__init__()
        self.seen: dict[str, bool] = {}

    def sample(self, n, sampler, nfe, generator):
        self.seen["sample"] = torch.is_grad_enabled()
        return super().sample(n, sampler, nfe, generator)

    def log_likelihood(self, x, generator):
        self.seen["log_likelihood"] = torch.is_grad_enabled()
        with torch.enable_grad():  # what docs/plugins.md tells an ODE method to do
            z = x.detach().clone().requires_grad_(True)
            y = self.net(z)
            div = sum(torch.autograd.grad(y[:, i].sum(), z, retain_graph=True)[0][:, i] for i in range(2))
        self.seen["divergence_has_grad"] = div.requires_grad
        base = torch.distributions.Normal(0.0, 1.0).log_prob(y.detach()).sum(1)
        return base + torch.log(div.detach().abs())


def test_sample_and_log_likelihood_run_without_autograd_and_enable_grad_works():
    from gmbench.evaluate import evaluate
    from gmbench.metrics.likelihood import HeldOutLikelihood

    method = OdeLikelihood()
    train_toy(method)
    assert not method.net.training  # the host leaves the modules in eval mode
    entries, costs = evaluate(method, EightGaussians(), TINY_BUDGET, [HeldOutLikelihood()], seed=0)
    assert method.seen == {"sample": False, "log_likelihood": False, "divergence_has_grad": False}
    (nll,) = [e for e in entries if e["name"] == "test_nll"]
    assert math.isfinite(nll["value"]) and costs


# -- the conformance kit's report objects ---------------------------------------------------------


def documented_fields(title: str) -> list[str]:
    """The `name` of each bullet in the list that follows **`title`** in docs/plugins.md."""
    block = re.search(rf"\*\*`{title}`\*\*[^\n]*\n\n((?:- [^\n]*\n)+)", PLUGINS_DOC)
    assert block, f"docs/plugins.md has no field list for {title}"
    return re.findall(r"^- `(\w+)`", block.group(1), re.M)


def test_kit_report_objects_are_documented_field_by_field():
    from gmbench.testing import Setup, Trained

    for cls in (Setup, Trained):
        assert documented_fields(cls.__name__) == [f.name for f in dataclasses.fields(cls)], cls.__name__
    # StageReport: the documented fields exist (the host may record more, e.g. metering detail)
    missing = set(documented_fields("StageReport")) - {f.name for f in dataclasses.fields(StageReport)}
    assert not missing, missing


# -- docs/backbones.md ----------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(re.findall(r"```python\n", BACKBONES_DOC))))
def test_backbones_doc_examples_run(index):
    code = re.findall(r"```python\n(.*?)```", BACKBONES_DOC, re.S)[index]
    exec(compile(code, f"docs/backbones.md example {index + 1}", "exec"), {})


def test_backbones_doc_tables_match_the_code():
    from gmbench import backbones

    presets = re.findall(r"^\| (mlp|unet|transformer) \| (\w+) \| ([^|]+) \|$", BACKBONES_DOC, re.M)
    assert len(presets) == len(backbones.KINDS) * len(backbones.SIZES)
    for kind, size, text in presets:
        config = ", ".join(f"{k} {v}" for k, v in backbones.size_config(kind, size).items())
        assert text.strip() == config, (kind, size)
    counts = re.findall(r"^\| `((?:MLP|UNet|Transformer)\([^`]*\))` \| ([\d,]+) \| ([\d,]+) \|$", BACKBONES_DOC, re.M)
    assert len(counts) == 5
    for call, tiny, small in counts:
        for size, documented in (("tiny", tiny), ("small", small)):
            net = eval(f"backbones.{call[:-1]}, size={size!r})", {"backbones": backbones})  # noqa: S307 - our own doc
            assert backbones.count_parameters(net) == int(documented.replace(",", "")), (call, size)


# -- the CLI promises of the tutorial -------------------------------------------------------------


def test_new_plugin_out_is_the_parent_folder(tmp_path):
    res = CliRunner().invoke(main, ["new-plugin", "my-method", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "gmbench-my-method" / "pyproject.toml").is_file()


def test_new_plugin_out_named_like_the_package_does_not_nest(tmp_path):
    """README's `gmbench new-plugin my-method --out ./gmbench-my-method` gave gmbench-my-method/gmbench-my-method."""
    out = tmp_path / "gmbench-my-method"
    res = CliRunner().invoke(main, ["new-plugin", "my-method", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "pyproject.toml").is_file() and (out / "src" / "gmbench_my_method" / "method.py").is_file()
    assert not (out / "gmbench-my-method").exists()
    # an existing, non-empty package folder is still refused
    res = CliRunner().invoke(main, ["new-plugin", "my-method", "--out", str(out)])
    assert res.exit_code == 1 and "already exists and is not empty" in res.output


def test_budgets_list_shows_batch_sizes_and_eval_samples_in_size_order():
    from gmbench.budget import SMALL, SMOKE

    res = CliRunner().invoke(main, ["budgets", "list"], catch_exceptions=False)
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert "batch_size" in lines[0] and "eval_samples" in lines[0]
    names = [ln.split()[0] for ln in lines[2:]]
    assert names[:4] == ["smoke", "small", "standard", "large"]
    smoke = lines[2]
    for b, field in ((SMOKE, "batch_size"), (SMOKE, "eval_samples")):
        assert ", ".join(f"{k} {v}" for k, v in getattr(b, field).items()) in smoke
    assert "toy2d 2000, image 1000, text 256" in lines[3] and SMALL.name == "small"
    # --json keeps every field, in the same order
    rows = json.loads(CliRunner().invoke(main, ["budgets", "list", "--json"]).output)
    assert [r["name"] for r in rows][:4] == names[:4] and rows[0]["batch_size"] == SMOKE.batch_size


def test_other_budgets_follow_the_built_in_ones_by_training_flops():
    from gmbench.budget import LARGE, SMALL, SMOKE, STANDARD
    from gmbench.cli.listing import budgets_in_size_order

    big = dataclasses.replace(SMOKE, name="aaa-big", train_flops={"toy2d": 1e20})
    tiny = dataclasses.replace(SMOKE, name="zzz-tiny", train_flops={"toy2d": 1.0})
    ordered = budgets_in_size_order([big, LARGE, tiny, SMOKE, STANDARD, SMALL])
    assert [b.name for b in ordered] == ["smoke", "small", "standard", "large", "zzz-tiny", "aaa-big"]
