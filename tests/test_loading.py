"""Loading instead of training: safetensors checkpoints round-trip, pickles are refused
without ever being unpickled, misfits are one-line errors, and external samples are
scored under the same protocol (same fingerprint) as trained runs."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from gmbench.cli import main
from gmbench.data import make_dataset
from gmbench.execution import RunOptions, make_executor
from gmbench.external import score_external
from gmbench.loading import LoadError, check_checkpoint_path
from gmbench.records import sha256_file
from gmbench.plugins import Registries, make_plugin_manager
from gmbench.records import RunSpec, load_records
from gmbench import hookimpl
from tests.plugins.faulty_methods import FAULT_BUDGET, FaultsPlugin, Healthy

SPEC = RunSpec("healthy", "8gaussians", "faults", 0)


def registries() -> Registries:
    return Registries(make_plugin_manager((FaultsPlugin(Healthy),), load_entrypoints=False))


def run(spec: RunSpec, out_dir: Path, **options) -> dict:
    [record] = make_executor("local", options=RunOptions(**options)).run([spec], registries(), out_dir)
    return record


def values(record: dict) -> list[tuple]:
    return sorted((e["name"], str(e["sampler"]), str(e["nfe"]), e["value"]) for e in record["metrics"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained run whose weights were saved with --save-checkpoints."""
    root = tmp_path_factory.mktemp("trained")
    record = run(SPEC, root / "records", checkpoint_dir=str(root / "ckpt"))
    assert record["status"] == "ok", record["error"]
    return record


# -- checkpoints ---------------------------------------------------------------------


def test_saved_weights_load_back_to_the_same_numbers_with_no_training_cost(trained, tmp_path):
    ckpt = trained["checkpoint"]
    assert Path(ckpt["path"]).suffix == ".safetensors" and ckpt["sha256"] == sha256_file(ckpt["path"])
    loaded = run(replace(SPEC, load=ckpt["path"]), tmp_path)
    assert loaded["status"] == "ok", loaded["error"]
    assert (loaded["source"], trained["source"]) == ("loaded", "trained")
    assert loaded["load"]["sha256"] == ckpt["sha256"]
    assert loaded["train"] is None and loaded["cost"]["train_flops"] is None and loaded["cost"]["train_seconds"] is None
    assert loaded["fingerprint"] == trained["fingerprint"]  # same protocol: same leaderboard
    assert values(loaded) == values(trained)  # same weights, same seed: same samples and scores
    assert replace(SPEC, load=ckpt["path"]).filename != SPEC.filename


class SamplesThroughDropout(Healthy):
    """``healthy`` with dropout on its samples: the identity only in eval mode."""

    name = "dropout-samples"

    def __init__(self, data, model_size="tiny"):
        super().__init__(data, model_size)
        self.drop = torch.nn.Dropout(0.5)

    def modules(self):
        return {**super().modules(), "drop": self.drop}

    def sample(self, n, sampler, nfe, generator):
        return self.drop(super().sample(n, sampler, nfe, generator))


def test_loaded_weights_are_evaluated_in_eval_mode(tmp_path):
    # a freshly built module is in training mode; a trained run ends in eval mode, and so must
    # a loaded one, or a network with dropout (the U-Net at base and large) samples with it on
    reg = Registries(make_plugin_manager((FaultsPlugin(SamplesThroughDropout),), load_entrypoints=False))
    spec = replace(SPEC, method="dropout-samples")
    [trained] = make_executor("local", options=RunOptions(checkpoint_dir=str(tmp_path / "ckpt"))).run(
        [spec], reg, tmp_path / "trained")
    assert trained["status"] == "ok", trained["error"]
    [loaded] = make_executor("local").run([replace(spec, load=trained["checkpoint"]["path"])], reg, tmp_path / "loaded")
    assert loaded["status"] == "ok", loaded["error"]
    assert values(loaded) == values(trained)


def test_a_curve_does_not_leave_the_final_evaluation_in_training_mode(tmp_path):
    # the curve's last point is taken after training and restored training mode; the final
    # evaluation must not sample with dropout on (curve.py: a curve does not change the result)
    class CurveBudget:
        @hookimpl
        def gmbench_register_budgets(self, register):
            register(replace(FAULT_BUDGET, name="faults-curve", curve_fractions=(0.5,)))

    reg = Registries(make_plugin_manager((FaultsPlugin(SamplesThroughDropout), CurveBudget()), load_entrypoints=False))
    spec = replace(SPEC, method="dropout-samples")
    plain, curved = (make_executor("local").run([replace(spec, budget=b)], reg, tmp_path / b)[0]
                     for b in ("faults", "faults-curve"))
    assert plain["status"] == curved["status"] == "ok", (plain["error"], curved["error"])
    assert curved["curve"]
    assert values(curved) == values(plain)


def _evil_pickle(path: Path, marker: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # unpickling would create the marker

    path.write_bytes(pickle.dumps(Evil()))
    return path


@pytest.mark.parametrize("name", ["weights.pt", "weights.ckpt", "weights.bin", "disguised.safetensors"])
def test_pickles_are_refused_without_being_unpickled(tmp_path, name):
    marker = tmp_path / "pwned"
    path = _evil_pickle(tmp_path / name, marker)
    with pytest.raises(LoadError, match="never unpickles") as info:
        check_checkpoint_path(path)
    assert "safetensors.torch" in str(info.value) and "\n" not in str(info.value)
    # the whole run path too: a failed record, still nothing unpickled
    rec = run(replace(SPEC, load=str(path)), tmp_path / "out")
    assert rec["status"] == "failed" and "never unpickles" in rec["error"]
    assert not marker.exists()


def test_torch_zip_checkpoint_renamed_to_safetensors_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    torch.save({"net.mu": torch.zeros(2)}, path)
    with pytest.raises(LoadError, match="pickle-based checkpoint"):
        check_checkpoint_path(path)


def test_checkpoint_that_does_not_fit_is_a_one_line_failed_record(trained, tmp_path):
    other_data = run(replace(SPEC, dataset="digits", load=trained["checkpoint"]["path"]), tmp_path / "a")
    assert other_data["status"] == "failed"
    assert other_data["error"].startswith("MethodError: checkpoint does not fit method 'healthy', module 'net'")
    assert "\n" not in other_data["error"]

    state = load_file(trained["checkpoint"]["path"])
    save_file({**state, "decoder.weight": torch.zeros(3)}, tmp_path / "stray.safetensors")
    stray = run(replace(SPEC, load=str(tmp_path / "stray.safetensors")), tmp_path / "b")
    assert "tensor 'decoder.weight' belongs to none of its modules" in stray["error"]


def test_cli_saves_then_loads_and_refuses_pickles(monkeypatch, tmp_path):
    monkeypatch.setattr("gmbench.plugins.Registries", registries)
    cli = CliRunner()
    base = ["run", "--plugins", "healthy", "--datasets", "8gaussians", "--budget", "faults"]
    res = cli.invoke(main, [*base, "--out", str(tmp_path / "a"), "--save-checkpoints", str(tmp_path / "ck")])
    assert res.exit_code == 0, res.output
    [ckpt] = (tmp_path / "ck").glob("*.safetensors")
    res = cli.invoke(main, [*base, "--out", str(tmp_path / "b"), "--load", f"healthy={ckpt}"])
    assert res.exit_code == 0 and "ok (loaded" in res.output, res.output
    [rec], _ = load_records([tmp_path / "b"])
    assert rec["source"] == "loaded"

    evil = _evil_pickle(tmp_path / "w.pth", tmp_path / "pwned")
    res = cli.invoke(main, [*base, "--out", str(tmp_path / "c"), "--load", f"healthy={evil}"])
    assert res.exit_code == 1 and "never unpickles" in res.output and not (tmp_path / "pwned").exists()
    assert res.output.strip().count("\n") == 0
    res = cli.invoke(main, [*base, "--out", str(tmp_path / "c"), "--load", f"vae={ckpt}"])
    assert res.exit_code == 1 and "'vae' is not among the runs selected" in res.output


# -- external samples ------------------------------------------------------------------


def test_external_samples_stand_on_the_same_board(trained, tmp_path):
    reg = registries()
    test_x = make_dataset(reg.datasets, "8gaussians").split("test").x.numpy()
    np.save(tmp_path / "truth.npy", test_x[:300])
    rec = score_external(reg, "8gaussians", tmp_path / "truth.npy", "held-out-data", "faults", tmp_path / "out")
    assert rec["status"] == "ok" and rec["source"] == "external" and rec["method"] == "held-out-data"
    assert rec["fingerprint"] == trained["fingerprint"]
    assert rec["samples"]["n_in_file"] == 300 and rec["samples"]["n_scored"] == 256
    named = {e["name"]: e["value"] for e in rec["metrics"] if e.get("value") is not None}
    model = {e["name"]: e["value"] for e in trained["metrics"] if e.get("value") is not None and e["sampler"]}
    assert {"swd", "sample_nll"} <= named.keys()
    assert named["swd"] < model["swd"]  # the data itself beats a diagonal Gaussian
    assert {e["sampler"] for e in rec["metrics"]} == {"external"}
    assert load_records([tmp_path / "out"])[1] == []


def test_image_folder_and_text_file_samples(tmp_path):
    from PIL import Image

    reg = registries()
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(folder / f"{i:03d}.png")
    rec = score_external(reg, "digits", folder, "noise", "faults", tmp_path / "out")
    assert rec["status"] == "ok", rec["error"]
    assert any(e["name"] == "pixel_swd" and e["value"] > 0 for e in rec["metrics"])

    synth = make_dataset(reg.datasets, "synthlang")
    lines = synth.decode(synth.split("test").x[:10])
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n")
    rec = score_external(reg, "synthlang", tmp_path / "text.txt", "real-text", "faults", tmp_path / "out")
    assert rec["status"] == "ok", rec["error"]


def _npy(tmp_path, array, name="s.npy", allow_pickle=False) -> Path:
    np.save(tmp_path / name, array, allow_pickle=allow_pickle)
    return tmp_path / name


@pytest.mark.parametrize(
    "dataset, make, message",
    [
        ("8gaussians", lambda p: _npy(p, np.zeros((300, 3), np.float32)), r"toy2d samples have shape \(300, 3\); expected \(N, 2\)"),
        ("8gaussians", lambda p: _npy(p, np.full((300, 2), np.nan, np.float32)), "300 of 300 samples contain NaN or inf"),
        ("8gaussians", lambda p: _npy(p, np.zeros((10, 2), np.float32)), "scores 256 samples on toy2d data; the file holds 10"),
        ("8gaussians", lambda p: _npy(p, np.array([{"a": 1}] * 300, dtype=object), allow_pickle=True), "never unpickles"),
        ("digits", lambda p: _npy(p, np.full((64, 1, 8, 8), 255.0, np.float32)), r"must lie in the data range \[-1, 1\]"),
        ("digits", lambda p: _npy(p, np.zeros((64, 8, 8), np.int64)), "must be uint8 pixels 0..255"),
        ("digits", lambda p: _npy(p, np.zeros((64, 2, 8, 8), np.uint8)), r"expected \(N, 1, 8, 8\)"),
        ("digits", lambda p: _npy(p, np.broadcast_to(np.arange(3, dtype=np.uint8)[:, None, None], (64, 3, 8, 8)).copy()),
         "colour: their 3 channels differ in 64 of 64 samples, but digits is greyscale"),
        ("synthlang", lambda p: _npy(p, np.zeros((8, 64), np.float32)), "must be integer token ids"),
        ("synthlang", lambda p: (p / "t.txt").write_text("too short\n") and p / "t.txt", "every sample line must have exactly"),
        ("8gaussians", lambda p: (p / "s.pkl").write_bytes(b"\x80") and p / "s.pkl", "never unpickles"),
        ("8gaussians", lambda p: (p / "bad.npy").write_bytes(b"garbage") and p / "bad.npy",
         r"bad.npy is not a .npy file \(no NumPy header\); save the samples with numpy.save"),
        ("8gaussians", lambda p: (p / "bad.npz").write_bytes(b"garbage") and p / "bad.npz", r"bad.npz is not a .npz file"),
    ],
)
def test_bad_external_samples_are_refused_in_one_line(tmp_path, dataset, make, message):
    path = make(tmp_path)
    with pytest.raises(LoadError, match=message) as info:
        score_external(registries(), dataset, path, "bad", "faults", tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing half-scored is written


def test_cli_eval(monkeypatch, tmp_path):
    monkeypatch.setattr("gmbench.plugins.Registries", registries)
    good = _npy(tmp_path, np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32), "good.npy")
    bad = _npy(tmp_path, np.zeros((256, 5), np.float32), "bad.npy")
    cli = CliRunner()
    args = ["eval", "--dataset", "8gaussians", "--budget", "faults", "--out", str(tmp_path / "out")]
    res = cli.invoke(main, [*args, "--samples", str(good), "--name", "my-model"])
    assert res.exit_code == 0 and "swd:" in res.output, res.output
    [rec], _ = load_records([tmp_path / "out"])
    assert (rec["method"], rec["source"]) == ("my-model", "external")
    res = cli.invoke(main, [*args, "--samples", str(bad)])
    assert res.exit_code == 1 and res.output.strip().count("\n") == 0 and "expected (N, 2)" in res.output
