"""Image metrics: FID/KID/IS/precision/recall through torch-fidelity with gmbench's
offline classifier features, the committed weights, reference-statistics caching
and the Inception path (offline: skipped or refused, never downloaded)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from gmbench.data.digits import Digits
from gmbench.metrics.base import EvalContext, MetricError, MetricSkipped
from gmbench.metrics.classifier import load_classifier, to_uint8
from gmbench.records import sha256_file
from gmbench.metrics.extractors import PACKAGE_WEIGHTS, ClassifierExtractor, InceptionExtractor
from gmbench.metrics.images import ImageFidelity


@pytest.fixture(scope="module")
def digits():
    return Digits()


@pytest.fixture
def ctx(digits, tmp_path):
    return EvalContext(dataset=digits, n_samples=359, seed=0, cache_dir=str(tmp_path))


@pytest.fixture(scope="module")
def scores(digits, tmp_path_factory):
    """FID & co. of real test images, noise, and half the classes, vs the train split."""
    ctx = EvalContext(dataset=digits, n_samples=359, seed=0, cache_dir=str(tmp_path_factory.mktemp("cache")))
    test = digits.split("test")
    half = test.x[test.y < 5]
    g = torch.Generator().manual_seed(0)
    metric = ImageFidelity()
    return {
        "real": metric.score_samples(test.x, ctx),
        "real_same_n": metric.score_samples(test.x[: len(half)], ctx),
        "half": metric.score_samples(half, ctx),
        "noise": metric.score_samples(torch.rand(359, 1, 8, 8, generator=g) * 2 - 1, ctx),
    }


def test_real_vs_real_fid_is_near_zero_and_noise_is_far(scores):
    real, noise = scores["real"], scores["noise"]
    assert real["fid"] < 0.05 * noise["fid"]
    assert real["kid"] < 0.05 * noise["kid"]
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert noise["precision"] < 0.5 and noise["recall"] < 0.2


def test_dropping_half_the_classes_lowers_recall_not_precision(scores):
    half, full = scores["half"], scores["real_same_n"]
    assert half["recall"] < full["recall"] - 0.25
    assert half["precision"] > 0.8
    assert half["fid"] > 3 * full["fid"]


def test_inception_score_counts_classes(scores):
    # 10 balanced, confidently classified classes give IS near 10; five give near 5
    assert 7 < scores["real"]["isc"] <= 10
    assert scores["half"]["isc"] < 0.65 * scores["real"]["isc"]
    assert scores["noise"]["isc"] < scores["half"]["isc"]


def test_committed_weights_match_their_sidecar_and_accuracy_is_reproduced(digits):
    path = PACKAGE_WEIGHTS / "digits-cnn.safetensors"
    side = json.loads(path.with_suffix(".json").read_text())
    assert path.stat().st_size < 1_000_000
    assert side["sha256"] == sha256_file(path) and side["dataset"] == "digits" and side["trained_on"] == "train"
    net = load_classifier(path)
    test = digits.split("test")
    with torch.no_grad():
        acc = float((net(to_uint8(test.x)).argmax(1) == test.y).float().mean())
    assert acc == pytest.approx(side["test_accuracy"], abs=0.01)
    assert acc > 0.95


def test_extractor_is_registered_with_torch_fidelity_and_gets_its_weights_path(ctx):
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    ext = ClassifierExtractor()
    ext.register_with_torch_fidelity()
    ext.register_with_torch_fidelity()  # idempotent
    assert issubclass(FEATURE_EXTRACTORS_REGISTRY["gmbench-cnn"], FeatureExtractorBase)
    fe = create_feature_extractor("gmbench-cnn", ["pool", "logits"], cuda=False,
                                  feature_extractor_weights_path=str(ext.weights_path(ctx)), verbose=False)
    pool, logits = fe(torch.zeros(3, 1, 8, 8, dtype=torch.uint8))
    assert pool.shape == (3, 128) and logits.shape == (3, 10)


def test_extractors_come_through_the_gmbench_hook():
    from gmbench.plugins import Registries, make_plugin_manager

    reg = Registries(make_plugin_manager(load_entrypoints=False))
    assert {"gmbench-cnn", "gmbench-inception-v3"} <= set(reg.feature_extractors.names())
    assert {"image_fidelity", "image_fidelity_inception"} <= set(reg.metrics.names())


def test_fingerprint_names_extractor_weights_hash_and_reference(ctx):
    fields = ImageFidelity().fingerprint_fields(ctx)
    assert fields["extractor"] == "gmbench-cnn"
    assert fields["weights_sha256"] == sha256_file(PACKAGE_WEIGHTS / "digits-cnn.safetensors")
    assert (fields["reference_split"], fields["reference_n"]) == ("train", 1222)  # 1797 - 359 test - 216 val
    assert fields["n_samples"] == 359 and fields["kid_subset_size"] == 359
    ctx.options["fid_reference_split"] = "test"
    assert ImageFidelity().fingerprint_fields(ctx)["reference_n"] == 359


def test_reference_statistics_are_cached_under_a_key_of_what_they_depend_on(ctx, digits, tmp_path):
    metric = ImageFidelity()
    x = digits.split("test").x[:100]
    first = metric.score_samples(x, ctx)
    files = sorted(p.name for p in (tmp_path / "fidelity").iterdir())
    sha = sha256_file(PACKAGE_WEIGHTS / "digits-cnn.safetensors")[:16]
    assert files and all(f.startswith(f"gmbench-digits-train-n1222-") and f"-w{sha}-gmbench-cnn-" in f for f in files)
    assert any("stat-fid" in f for f in files)
    def stamps():
        return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "fidelity").iterdir()}

    before = stamps()
    again = metric.score_samples(x, EvalContext(dataset=digits, n_samples=100, seed=0, cache_dir=str(tmp_path)))
    # served from the cache: no reference statistics written again (the numbers alone cannot
    # tell, the computation is deterministic), and the same numbers
    assert stamps() == before
    assert again == first
    ctx.options["fid_reference_split"] = "test"
    metric.score_samples(x, ctx)
    assert any(p.name.startswith("gmbench-digits-test-n359-") for p in (tmp_path / "fidelity").iterdir())


def test_missing_classifier_weights_skip_with_the_command_to_make_them(tmp_path):
    class Renamed(Digits):
        name = "digits-renamed"

    ctx = EvalContext(dataset=Renamed(), n_samples=10, seed=0, cache_dir=str(tmp_path))
    with pytest.raises(MetricSkipped, match="train_feature_extractor.py --dataset digits-renamed"):
        ImageFidelity().score_samples(torch.zeros(10, 1, 8, 8), ctx)
    assert ImageFidelity().fingerprint_fields(ctx)["available"] is False


def test_unknown_extractor_option_is_an_error_with_suggestion(ctx):
    ctx.options["feature_extractor"] = "gmbench-cn"
    with pytest.raises(MetricError, match="Did you mean 'gmbench-cnn'"):
        ImageFidelity().score_samples(torch.zeros(10, 1, 8, 8), ctx)


def test_inception_is_skipped_with_a_note_when_no_weights_are_on_disk(ctx, tmp_path, monkeypatch):
    monkeypatch.delenv("GMBENCH_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    metric = ImageFidelity("gmbench-inception-v3", suffix="_inception")
    assert [o.name for o in metric.outputs][0] == "fid_inception"
    with pytest.raises(MetricSkipped, match="GMBENCH_INCEPTION_WEIGHTS"):
        metric.score_samples(torch.zeros(10, 1, 8, 8), ctx)
    ctx.options["inception_weights"] = str(tmp_path / "nope.pth")
    with pytest.raises(MetricError, match="do not exist"):
        metric.score_samples(torch.zeros(10, 1, 8, 8), ctx)


class _NotATensor:
    pass


def test_inception_weights_that_are_not_plain_tensors_are_refused(tmp_path):
    from gmbench.metrics.fidelity_nets import SafeInceptionV3

    bad = tmp_path / "evil.pth"
    torch.save({"w": _NotATensor()}, bad)
    with pytest.raises(pickle.UnpicklingError):
        SafeInceptionV3("gmbench-inception-v3", ["2048"], feature_extractor_weights_path=str(bad))


def test_inception_input_is_three_channel_uint8():
    x = InceptionExtractor().to_input(torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2), (-1.0, 1.0))
    assert x.dtype == torch.uint8 and x.shape == (1, 3, 2, 2)
    assert x[0, :, 0, 0].tolist() == [0, 0, 0] and x[0, 0].flatten().tolist() == [0, 128, 255, 255]
