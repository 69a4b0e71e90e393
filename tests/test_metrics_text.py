"""Text metrics: exact NLL under the true source, degeneracy guards, generative
perplexity under the suite's own reference model (trained once, cached), GPT-2 skip."""

from __future__ import annotations

import pytest
import torch

from gmbench.budget import Budget
from gmbench.data.synthlang import SyntheticLanguage
from gmbench.metrics.base import EvalContext, MetricSkipped
from gmbench.metrics.genppl import GenerativePerplexity, GPT2Perplexity, ReferenceAR, reference_model
from gmbench.metrics.text import TextDegeneracy, TrueSourceNLL, repeated_ngram_rate, unigram_entropy_bits

TEXT_BUDGET = Budget(
    name="text-test",
    train_flops={"toy2d": 1e6, "image": 1e6, "text": 4e9},
    batch_size={"toy2d": 8, "image": 8, "text": 16},
    wall_clock_s=60,
    model_size="tiny",
    eval_samples={"toy2d": 8, "image": 8, "text": 64},
    nfe_grid=(1,),
)


@pytest.fixture(scope="module")
def lang():
    return SyntheticLanguage(seq_len=16, n_train=600, n_test=300)


def _ctx(lang, tmp_path, **kw):
    return EvalContext(dataset=lang, n_samples=64, seed=0, cache_dir=str(tmp_path), budget=TEXT_BUDGET, **kw)


def test_true_source_scores_real_text_as_real_and_noise_as_impossible(lang, tmp_path):
    ctx = _ctx(lang, tmp_path)
    real = TrueSourceNLL().score_samples(lang.sample(300, 123), ctx)
    assert real["impossible_share"] == 0.0 and real["sample_nll_gap_bits"] < 0.1
    noise = TrueSourceNLL().score_samples(torch.randint(0, 27, (300, 16), generator=torch.Generator().manual_seed(0)), ctx)
    assert noise["impossible_share"] > 0.9


def test_collapsed_text_is_too_likely_and_the_gap_sees_it(lang, tmp_path):
    ctx = _ctx(lang, tmp_path)
    test = lang.split("test").x
    best = test[lang.log_prob(test).argmax()]
    collapsed = TrueSourceNLL().score_samples(best.repeat(64, 1), ctx)
    real_bits = TrueSourceNLL().real_bits(ctx)
    assert collapsed["sample_nll_bits"] < real_bits - 0.2
    assert collapsed["sample_nll_gap_bits"] == pytest.approx(real_bits - collapsed["sample_nll_bits"])


def test_unigram_entropy_and_repeated_ngrams_exact_values():
    assert unigram_entropy_bits(torch.tensor([[0, 1, 2, 3]]), 27) == pytest.approx(2.0)
    assert unigram_entropy_bits(torch.tensor([[5, 5, 5]]), 27) == 0.0
    # 4-grams of 1 2 3 4 1 2 3 4: 1234 2341 3412 4123 1234 -> one of five repeats
    assert repeated_ngram_rate(torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4]])) == pytest.approx(0.2)
    assert repeated_ngram_rate(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])) == 0.0
    assert repeated_ngram_rate(torch.tensor([[7] * 10])) == pytest.approx(6 / 7)


def test_degeneracy_guards_flag_loops_and_pass_real_text(lang, tmp_path):
    ctx = _ctx(lang, tmp_path)
    real = TextDegeneracy().score_samples(lang.sample(300, 5), ctx)
    assert real["unigram_entropy_gap_bits"] < 0.1 and real["repeat_4gram_gap"] < 0.05
    loop = TextDegeneracy().score_samples(torch.tensor([1, 2, 0]).repeat(64, 6)[:, :16], ctx)
    assert loop["unigram_entropy_bits"] < real["unigram_entropy_bits"] - 1.5
    assert loop["repeat_4gram_rate"] > 0.7 and loop["repeat_4gram_gap"] > 0.5


def test_reference_model_is_trained_under_the_budget_once_and_cached(lang, tmp_path, monkeypatch):
    ctx = _ctx(lang, tmp_path)
    rng = torch.random.get_rng_state()
    model, meta = reference_model(ctx)
    assert torch.equal(rng, torch.random.get_rng_state())  # the run's RNG stream is untouched
    assert isinstance(model, ReferenceAR) and meta["cached"] == "false"
    assert 0 < float(meta["flops"]) <= TEXT_BUDGET.flops_for("text") and int(meta["steps"]) >= 1
    files = list((tmp_path / "reference_ar").glob("synthlang-text-test-s0-*.safetensors"))
    assert len(files) == 1

    import gmbench.training

    monkeypatch.setattr(gmbench.training, "train", lambda *a, **k: pytest.fail("retrained a cached reference"))
    again, meta2 = reference_model(_ctx(lang, tmp_path))
    assert meta2["cached"] == "true"
    x = lang.split("test").x[:8]
    assert torch.equal(again.token_nll(x), model.token_nll(x))


def test_an_environment_error_is_not_cached_as_the_reference_failing(lang, tmp_path, monkeypatch):
    # A deleted working directory made a published run's reference fail with a bare
    # FileNotFoundError, and the cached failure then poisoned every later run.
    import gmbench.training
    from gmbench.metrics.base import MetricError

    calls = []

    def broken(*a, **k):
        calls.append(1)
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(gmbench.training, "train", broken)
    for _ in range(2):
        with pytest.raises(MetricError, match="No such file or directory"):
            reference_model(_ctx(lang, tmp_path))
    assert len(calls) == 2  # tried again: nothing was cached
    assert not list((tmp_path / "reference_ar").glob("*.failed.json"))


def test_a_failed_reference_is_cached_with_its_reason_until_cleared(lang, tmp_path, monkeypatch):
    import gmbench.training
    from gmbench.metrics.base import MetricError

    calls = []

    def broken(*a, **k):
        calls.append(1)
        raise RuntimeError("injected: out of memory")

    monkeypatch.setattr(gmbench.training, "train", broken)
    for _ in range(2):
        with pytest.raises(MetricError, match="injected: out of memory"):
            reference_model(_ctx(lang, tmp_path))
    assert len(calls) == 1  # the second run read the cached failure, it did not try again
    (failed,) = (tmp_path / "reference_ar").glob("*.failed.json")
    monkeypatch.undo()
    failed.unlink()  # the user clears it: the next run builds the reference
    model, meta = reference_model(_ctx(lang, tmp_path))
    assert meta["cached"] == "false"


def test_a_reference_stopped_midway_continues_from_its_checkpoint(lang, tmp_path, monkeypatch):
    """A run killed (here: capped) while training the reference leaves a checkpoint the next run
    continues, and the result equals a reference trained in one go."""
    from gmbench.metrics.base import MetricError

    whole, _ = reference_model(_ctx(lang, tmp_path / "whole"))
    monkeypatch.setenv("GMBENCH_CAP_SCALE", "1e-12")  # the cap passes at once: training stops at step 0
    with pytest.raises(MetricError, match="not trained yet"):
        reference_model(_ctx(lang, tmp_path / "cut"))
    assert list((tmp_path / "cut" / "reference_ar").glob("*.checkpoint/state.json"))
    monkeypatch.setenv("GMBENCH_CAP_SCALE", "50")
    resumed, meta = reference_model(_ctx(lang, tmp_path / "cut"))
    assert meta["cached"] == "false" and not list((tmp_path / "cut" / "reference_ar").glob("*.checkpoint"))
    x = lang.split("test").x[:8]
    assert torch.equal(resumed.token_nll(x), whole.token_nll(x))


def test_generative_perplexity_prefers_real_text_to_noise(lang, tmp_path):
    ctx = _ctx(lang, tmp_path)
    metric = GenerativePerplexity()
    real = metric.score_samples(lang.sample(64, 9), ctx)
    noise = metric.score_samples(torch.randint(0, 27, (64, 16), generator=torch.Generator().manual_seed(1)), ctx)
    assert real["gen_ppl"] < noise["gen_ppl"]
    assert real["gen_ppl_gap"] < noise["gen_ppl_gap"]
    fields = metric.fingerprint_fields(ctx)
    assert fields["reference"]["seed"] == 0 and len(fields["reference_key"]) == 16
    other = metric.fingerprint_fields(EvalContext(dataset=lang, n_samples=64, seed=0, budget=TEXT_BUDGET, options={"reference_seed": 1}))
    assert other["reference_key"] != fields["reference_key"]


def test_gpt2_is_skipped_cleanly_without_local_weights(lang, tmp_path, monkeypatch):
    monkeypatch.delenv("GMBENCH_GPT2_WEIGHTS", raising=False)
    metric = GPT2Perplexity()
    with pytest.raises(MetricSkipped, match="GMBENCH_GPT2_WEIGHTS"):
        metric.score_samples(torch.zeros(2, 16, dtype=torch.long), _ctx(lang, tmp_path))
    assert metric.fingerprint_fields(_ctx(lang, tmp_path))["available"] is False
    monkeypatch.setenv("GMBENCH_GPT2_WEIGHTS", str(tmp_path))
    try:
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(MetricSkipped, match="transformers"):
            metric.score_samples(torch.zeros(2, 16, dtype=torch.long), _ctx(lang, tmp_path))


def test_gpt2_path_runs_with_a_tiny_local_model(lang, tmp_path, monkeypatch):
    """Where transformers is installed: a 1-layer GPT-2 with a character tokenizer saved
    locally scores decoded samples (the path real GPT-2 weights take)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    chars = sorted(set(" abcdefghijklmnopqrstuvwxyz"))
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)} | {"[UNK]": len(chars)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(chars) + 1, n_layer=1, n_head=2, n_embd=16, n_positions=64))
    fast.save_pretrained(tmp_path / "gpt2")
    model.save_pretrained(tmp_path / "gpt2")
    monkeypatch.setenv("GMBENCH_GPT2_WEIGHTS", str(tmp_path / "gpt2"))
    metric = GPT2Perplexity()
    out = metric.score_samples(lang.sample(8, 3), _ctx(lang, tmp_path))
    # an untrained model is close to uniform over its vocabulary
    assert 0.5 * (len(chars) + 1) < out["gen_ppl_gpt2"] < 2 * (len(chars) + 1)
    assert metric.fingerprint_fields(_ctx(lang, tmp_path))["config_sha256"]
