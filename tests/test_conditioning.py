"""Class conditioning in the contract (gmbench.conditioning): the host's class choice, the
labels it trains a conditional method with, the checks, the board's mark, and the
class-conditional U-Net and LDM."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from torch import nn

from gmbench.backbones import UNet
from gmbench.budget import SMOKE
from gmbench.conditioning import check_conditioning, draw_samples, evaluation_classes
from gmbench.data.base import DataSpec
from gmbench.data.digits import Digits
from gmbench.evaluate import check_nfe, counted_nfe
from gmbench.leaderboard import CONDITIONAL_MARK, build_boards, method_label, write_leaderboards
from gmbench.method import Method, MethodError, OptimizerSpec, SamplerInfo, Stage
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.autoregressive.mar import MAR, GuidedHead
from gmbench_methods.diffusion.ldm import LDM, GuidedDenoiser

LABELLED = DataSpec(name="toylab", modality="toy2d", shape=(2,), num_classes=3)
UNLABELLED = DataSpec(name="toy", modality="toy2d", shape=(2,))
DIGITS = DataSpec(name="digits", modality="image", shape=(1, 8, 8), levels=17, value_range=(-1.0, 1.0), num_classes=10)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ the host's classes


@pytest.mark.parametrize("n,k", [(30, 10), (37, 10), (1, 10), (5, 3)])
def test_evaluation_classes_are_balanced(n, k):
    c = evaluation_classes(k, n, gen(0))
    counts = Counter(c.tolist())
    assert c.shape == (n,) and c.dtype == torch.long and set(counts) <= set(range(k))
    assert max(counts.values()) - min(counts.get(i, 0) for i in range(k) if n >= k or i in counts) <= 1


def test_evaluation_classes_follow_the_generator():
    a, b = evaluation_classes(10, 50, gen(3)), evaluation_classes(10, 50, gen(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, evaluation_classes(10, 50, gen(4)))  # the order is the seed's, not fixed
    # a single sample's class is not always the first class
    assert len({int(evaluation_classes(10, 1, gen(s))) for s in range(20)}) > 3


# ------------------------------------------------------------------ a conditional method


class Recorder(Method):
    """Learns one mean per class; records the labels and classes the host hands it."""

    name, family, paper = "recorder", "test", "0000.00000"
    modalities = ("toy2d",)
    samplers = (SamplerInfo("draw", adjustable_nfe=False, deterministic=False, default_nfe=1),)

    def __init__(self, data, model_size="small", cond=True):
        super().__init__(data, model_size)
        self.class_conditional = cond
        self.means = nn.Embedding((data.num_classes or 1), 2)
        self.seen: list = []
        self.asked: list = []

    def modules(self):
        return {"means": self.means}

    def stages(self):
        return [Stage("fit", (OptimizerSpec("adam", ("means",), lr=0.1),))]

    def training_step(self, stage, batch, step, labels=None):
        self.seen.append((batch.clone(), None if labels is None else labels.clone()))
        y = labels if labels is not None else torch.zeros(len(batch), dtype=torch.long)
        return {"adam": (self.means(y) - batch).pow(2).mean()}

    def sample(self, n, sampler, nfe, generator, classes=None):
        self.asked.append(classes)
        y = classes if classes is not None else torch.zeros(n, dtype=torch.long)
        return self.means(y) + 0.01 * torch.randn(n, 2, generator=generator)


def _labelled_data(n=96):
    y = torch.arange(n) % 3
    x = torch.stack([y.float() * 10, -y.float()], 1)  # each row says its label
    return x, y


def test_training_passes_each_batchs_own_labels():
    x, y = _labelled_data()
    m = Recorder(LABELLED)
    budget = dataclasses.replace(SMOKE, train_flops={"toy2d": 2e5}, batch_size={"toy2d": 16})
    train(m, x, budget, "toy2d", gen(0), labels=y)
    assert len(m.seen) > 3
    for batch, labels in m.seen:
        assert labels is not None and torch.equal(labels, (batch[:, 0] / 10).round().long())
    # the means learned their classes: the labels were used
    assert torch.allclose(m.means.weight[:, 0], torch.tensor([0.0, 10.0, 20.0]), atol=2.0)


def test_an_unconditional_method_is_called_without_labels():
    x, y = _labelled_data()
    m = Recorder(LABELLED, cond=False)
    budget = dataclasses.replace(SMOKE, train_flops={"toy2d": 1e5}, batch_size={"toy2d": 16})
    train(m, x, budget, "toy2d", gen(0), labels=y)
    assert m.seen and all(labels is None for _, labels in m.seen)
    draw_samples(m, 4, "draw", 1, gen(0))
    assert m.asked == [None]


def test_draw_samples_hands_a_conditional_method_the_hosts_classes():
    m = Recorder(LABELLED)
    draw_samples(m, 9, "draw", 1, gen(5))
    assert torch.equal(m.asked[0], evaluation_classes(3, 9, gen(5)))
    assert sorted(Counter(m.asked[0].tolist()).values()) == [3, 3, 3]


def test_conditional_training_needs_labels():
    x, _ = _labelled_data()
    with pytest.raises(MethodError, match="needs a labelled dataset") as e:
        train(Recorder(LABELLED), x, SMOKE, "toy2d", gen(0), labels=None)
    assert "\n" not in str(e.value)
    with pytest.raises(MethodError, match="needs a labelled dataset"):
        check_conditioning(Recorder(UNLABELLED), torch.zeros(4, dtype=torch.long), 4)
    with pytest.raises(MethodError, match=r"0\.\.2"):
        check_conditioning(Recorder(LABELLED), torch.tensor([0, 1, 3]), 3)
    with pytest.raises(MethodError, match="shape"):
        check_conditioning(Recorder(LABELLED), torch.zeros(5, dtype=torch.long), 4)
    with pytest.raises(MethodError, match="has no classes"):
        draw_samples(Recorder(UNLABELLED), 2, "draw", 1, gen(0))


def test_a_conditional_method_declares_no_likelihood():
    m = Recorder(LABELLED)
    m.likelihood = "exact"
    with pytest.raises(MethodError, match="likelihood 'none'"):
        check_conditioning(m, torch.zeros(4, dtype=torch.long), 4)


# ------------------------------------------------------------------ the board's mark


def test_boards_mark_conditional_runs(tmp_path):
    from tests.test_leaderboard import _registries, make_record

    cond = [make_record("m", s, {("swd", "s", 10): 0.1 + s / 100}, conditioning={"kind": "class", "classes": 3})
            for s in (0, 1)]
    plain = [make_record("m", s, {("swd", "s", 10): 0.3 + s / 100}) for s in (0, 1)]
    assert method_label(cond[0]) == f"m[{CONDITIONAL_MARK}]" and method_label(plain[0]) == "m"
    (board,) = build_boards(cond + plain, _registries())
    assert sorted(r["method"] for r in board.ranking) == ["m", f"m[{CONDITIONAL_MARK}]"]  # never averaged together
    write_leaderboards(cond + plain, tmp_path, _registries())
    text = (tmp_path / "8gaussians__tiny.md").read_text()
    assert CONDITIONAL_MARK in text and "drawn given a class" in text
    write_leaderboards(plain, tmp_path / "plain", _registries())
    assert "drawn given a class" not in (tmp_path / "plain" / "8gaussians__tiny.md").read_text()


# ------------------------------------------------------------------ the conditional U-Net


def test_unet_class_embedding():
    torch.manual_seed(0)
    net = UNet(1, 1, 8, size="tiny", num_classes=10)
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    a = net(x, t, torch.tensor([0, 1, 2, 10]))
    b = net(x, t, torch.tensor([3, 1, 2, 10]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1:], b[1:])  # the label changes its own row only
    with pytest.raises(TypeError, match="class-conditional"):
        net(x, t)
    plain = UNet(1, 1, 8, size="tiny")
    assert not any("class_embed" in k for k in plain.state_dict())  # unconditional weights unchanged
    with pytest.raises(TypeError, match="without num_classes"):
        plain(x, t, torch.zeros(4, dtype=torch.long))


def test_guided_denoiser_is_classifier_free_guidance():
    class Linear(nn.Module):  # eps(z, t, c) = z * (c + 1)
        def forward(self, z, t, c):
            return z * (c.float() + 1).view(-1, 1, 1, 1)

    z, c = torch.randn(3, 1, 4, 4), torch.tensor([0, 2, 5])
    out = GuidedDenoiser(Linear(), c, 10, 1.5)(z, torch.zeros(3))
    uncond, cond = z * 11, z * (c.float() + 1).view(-1, 1, 1, 1)
    assert torch.allclose(out, uncond + 1.5 * (cond - uncond))
    assert torch.allclose(GuidedDenoiser(Linear(), c, 10, 1.0)(z, torch.zeros(3)), cond)


# ------------------------------------------------------------------ conditional LDM


def test_conditional_ldm_options():
    m = LDM(DIGITS, model_size="tiny", class_cond=True)
    assert m.class_conditional and [s.name for s in m.samplers] == ["ddim", "ancestral", "ddim-cfg"]
    assert m.sampler("ddim-cfg").params["guidance"] == 1.5 and m.sampler("ddim").params["guidance"] == 1.0
    assert not LDM(DIGITS, model_size="tiny").class_conditional
    with pytest.raises(MethodError, match="class_cond=true"):
        LDM(DIGITS, model_size="tiny", guidance=2.0)
    with pytest.raises(MethodError, match="labelled dataset"):
        LDM(dataclasses.replace(DIGITS, num_classes=None), model_size="tiny", class_cond=True)
    with pytest.raises(MethodError, match="p_uncond"):
        LDM(DIGITS, model_size="tiny", class_cond=True, p_uncond=1.0)


def test_guided_sampling_counts_both_unet_calls():
    torch.manual_seed(0)
    m = LDM(DIGITS, model_size="tiny", class_cond=True, guidance=2.0)
    m.train(False)
    # NFE 6: 5 U-Net steps and the decoder; guidance doubles the U-Net's calls
    assert counted_nfe(m, "ddim", 6, gen(0)) == 6
    assert counted_nfe(m, "ddim-cfg", 6, gen(0)) == 11
    check_nfe(m, "ddim-cfg", 6, 11)
    with pytest.raises(MethodError, match="given classes"):
        m.sample(2, "ddim", 6, gen(0))


def requested_digit_accuracy(method_cls, sampler: str, nfe: int, shuffle_labels: bool = False) -> float:
    """Train ``method_cls(class_cond=True)`` at ``smoke`` on digits with the labels, draw 200
    samples of balanced classes with ``sampler`` and return the share the suite's digits
    classifier reads as the class asked for (chance: 10%)."""
    from importlib.resources import files

    from gmbench.metrics.classifier import load_classifier, to_uint8

    ds = Digits()
    split = ds.split("train")
    labels = split.y[torch.randperm(len(split.y), generator=gen(9))] if shuffle_labels else split.y
    torch.manual_seed(0)
    m = method_cls(ds.spec(), model_size=SMOKE.model_size, class_cond=True)
    train(m, split.x, SMOKE, "image", gen(0), labels=labels)
    m.train(False)
    classes = evaluation_classes(10, 200, gen(1))
    x = m.sample(200, sampler, nfe, gen(2), classes=classes)
    clf = load_classifier(files("gmbench.metrics") / "weights" / "digits-cnn.safetensors")
    with torch.no_grad():
        return float((clf(to_uint8(x)).argmax(1) == classes).float().mean())


def test_conditional_ldm_draws_the_requested_digit():
    """Trained at ``smoke`` with the labels, guided samples are classified as the class they
    were asked for far above chance."""
    accuracy = requested_digit_accuracy(LDM, "ddim-cfg", 20)
    # measured (seed 0): 0.95 with guidance 1.5, 0.83 unguided (ddim); trained on shuffled labels
    # (shuffle_labels=True: the labels carry no class) 0.10
    assert accuracy > 0.5, accuracy


# ------------------------------------------------------------------ conditional MAR


def test_conditional_mar_options_and_samplers():
    m = MAR(DIGITS, model_size="tiny", class_cond=True)
    names = [s.name for s in m.samplers]
    assert m.class_conditional and names == ["ddpm", "ddpm-s20", "ddpm-s20-cfg"]
    cfg, s20 = m.sampler("ddpm-s20-cfg"), m.sampler("ddpm-s20")
    assert cfg.calls_per_step == 2 * s20.calls_per_step == 42 and cfg.params["guidance"] == 1.5
    assert s20.params["guidance"] == 1.0
    assert [s.name for s in MAR(DIGITS, model_size="tiny", loss="ce", class_cond=True).samplers] == ["categorical"]
    assert not MAR(DIGITS, model_size="tiny").class_conditional
    with pytest.raises(MethodError, match="class_cond=true"):
        MAR(DIGITS, model_size="tiny", p_uncond=0.2)
    with pytest.raises(MethodError, match="labelled dataset"):
        MAR(dataclasses.replace(DIGITS, num_classes=None), model_size="tiny", class_cond=True)


def test_mar_guidance_counts_both_networks_twice():
    torch.manual_seed(0)
    m = MAR(DIGITS, model_size="tiny", class_cond=True, guidance=2.0)
    m.train(False)
    # K = 4 steps over 16 tokens: each step one transformer call and 20 head calls, guided twice that
    assert counted_nfe(m, "ddpm-s20", 4, gen(0)) == 4 * 21
    assert counted_nfe(m, "ddpm-s20-cfg", 4, gen(0)) == 4 * 42
    check_nfe(m, "ddpm-s20-cfg", 4, 4 * 42)


def test_mar_guided_head_and_schedule():
    class Head(nn.Module):  # eps(x, t, z) = x * z
        def forward(self, x, t, z):
            return x * z

    x, zc, zu = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4)
    out = GuidedHead(Head(), zu, 2.5)(x, torch.zeros(5), zc)
    assert torch.allclose(out, x * zu + 2.5 * (x * zc - x * zu))
    # the class changes the transformer's output; the null class is a row of its own
    torch.manual_seed(0)
    m = MAR(DIGITS, model_size="tiny", class_cond=True)
    tokens, known = torch.randn(2, m.L, m.d), torch.ones(2, m.L, dtype=torch.bool)
    a = m.net(tokens, known, torch.tensor([1, 10]))
    b = m.net(tokens, known, torch.tensor([2, 10]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])


def test_conditional_mar_draws_the_requested_digit():
    """Trained at ``smoke`` with the labels, MAR's guided samples are classified as the class
    asked for well above chance."""
    accuracy = requested_digit_accuracy(MAR, "ddpm-s20-cfg", 8)
    # measured (seed 0): 0.475 guided, 0.41 unguided (ddpm-s20); shuffle_labels=True 0.105
    assert accuracy > 0.25, accuracy


class TestConditionalMARConformance(MethodConformance):
    method = MAR
    dataset = "digits"
    hparams = {"class_cond": True}



class TestConditionalLDMConformance(MethodConformance):
    """The conformance kit on the class-conditional LDM: the host's classes reach every sample."""

    method = LDM
    dataset = "digits"
    hparams = {"class_cond": True}
