"""`gmbench eval` reads samples made elsewhere as they were meant (issue 8, item 6).

Each test reproduces one way external samples were misread: rows scored in file
order, 16-bit PNGs cut to 0/255, AppleDouble files beside the images, greyscale
saved as RGB, floats in [0, 1] for a [-1, 1] dataset, a UTF-8 byte-order mark,
and an FID reference split that could not be chosen. Inputs are built here from
the embedded digits and synthlang data; the ``faults`` budget scores 32 images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gmbench.cli import main
from gmbench.data.digits import Digits
from gmbench.data.synthlang import SyntheticLanguage
from gmbench.external import score_external, scored_rows
from gmbench.loading import LoadError, read_samples, samples_to_tensor
from gmbench.plugins import Registries, make_plugin_manager
from gmbench.records import load_records
from tests.plugins.faulty_methods import FaultsPlugin, Healthy

N_SCORED = 32  # the faults budget's image sample count


class Clamped(Healthy):
    """The fake Gaussian fit, its samples clamped to the data range so image runs score."""

    name = "clamped"

    def sample(self, n, sampler, nfe, generator):
        lo, hi = self.data.value_range if self.data.modality == "image" else (-float("inf"), float("inf"))
        return super().sample(n, sampler, nfe, generator).clamp(lo, hi)


def registries() -> Registries:
    return Registries(make_plugin_manager((FaultsPlugin(Healthy, Clamped),), load_entrypoints=False))


@pytest.fixture(scope="module")
def digits():
    return Digits()


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setattr("gmbench.plugins.Registries", registries)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args])


def values(rec: dict) -> dict:
    """Metric values (metrics skipped here, such as Inception FID without its weights, left out)."""
    return {e["name"]: e["value"] for e in rec["metrics"] if e["value"] is not None}


def score(path, dataset="digits", out=None, **kw) -> dict:
    rec = score_external(registries(), dataset, path, "ext", "faults", out or path.parent / "out", **kw)
    assert rec["status"] == "ok", rec["error"]
    return rec


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """Digits in [-1, 1] -> floats in [0, 1], (N, 8, 8)."""
    return ((x[:, 0].numpy() + 1) / 2).astype(np.float64)


def one_line_error(res, *needles) -> None:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.output.strip().count("\n") == 0, res.output
    for needle in needles:
        assert needle in res.output, res.output


# -- which rows are scored -----------------------------------------------------------------


def test_row_order_does_not_change_the_scores(digits, tmp_path):
    train = digits.split("train")
    by_class = train.x[torch.argsort(train.y, stable=True)]  # all 0s first, as a class-conditional sampler writes them
    shuffled = train.x[torch.randperm(len(train.x), generator=torch.Generator().manual_seed(1))]
    np.save(tmp_path / "by_class.npy", by_class.numpy())
    np.save(tmp_path / "shuffled.npy", shuffled.numpy())
    a, b = score(tmp_path / "by_class.npy"), score(tmp_path / "shuffled.npy")
    assert {"fid", "kid", "pixel_swd"} <= values(a).keys()
    assert values(a) == pytest.approx(values(b), rel=1e-6)
    rows = a["samples"]["rows"]
    assert (a["samples"]["n_in_file"], a["samples"]["n_scored"]) == (len(train.x), N_SCORED)
    assert "random" in rows and "seed 0" in rows and "row order" in rows


def test_scored_rows_are_a_seeded_subset_independent_of_row_order(digits):
    train = digits.split("train")
    order = torch.argsort(train.y, stable=True)
    x, labels = train.x[order], train.y[order]  # class order: the first 100 rows are all 0s
    reversed_x = x.flip(0)
    kept, _ = scored_rows(x, 100, seed=0)
    assert torch.equal(kept, scored_rows(reversed_x, 100, seed=0)[0])
    assert not torch.equal(kept, scored_rows(x, 100, seed=1)[0])  # the seed picks the subset
    picked = {int(labels[(x == row).flatten(1).all(1)][0]) for row in kept}
    assert picked == set(range(10))
    everything, how = scored_rows(x, len(x), seed=0)
    assert "all" in how and len(everything) == len(x) and torch.equal(everything, scored_rows(reversed_x, len(x), 0)[0])


# -- image files -----------------------------------------------------------------------------


def _write_folder(folder, pixels: np.ndarray, mode: str, suffix=".png"):
    folder.mkdir()
    for i, p in enumerate(pixels):
        if mode == "I;16":
            im = Image.fromarray(np.round(p * 65535).astype(np.uint16))
        else:
            im = Image.fromarray(np.round(p * 255).astype(np.uint8), mode="L")
            if mode != "L":
                im = im.convert(mode)
        im.save(folder / f"{i:05d}{suffix}")
    return folder


@pytest.mark.parametrize("mode", ["L", "I;16", "P", "LA", "1"])
def test_every_bit_depth_is_read_and_rescaled(digits, tmp_path, mode):
    x = digits.split("test").x[:40]
    pixels = to_pixels(x)
    if mode == "1":
        pixels = (pixels > 0.5).astype(np.float64)
    folder = _write_folder(tmp_path / "imgs", pixels, mode)
    with Image.open(next(folder.iterdir())) as im:
        assert im.mode == mode
    got = samples_to_tensor(read_samples(folder), digits)
    assert got.shape == x.shape
    assert torch.allclose(got, torch.from_numpy(pixels[:, None] * 2 - 1).float(), atol=2 / 255)


@pytest.mark.parametrize("dtype, mode", [(np.float32, "F"), (np.int32, "I")])
def test_pixels_without_a_fixed_scale_are_refused_in_one_line(digits, tmp_path, dtype, mode):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype)).save(folder / "00000.tif")
    with pytest.raises(LoadError, match=f"00000.tif.*mode {mode}") as info:
        read_samples(folder)
    assert "\n" not in str(info.value)


def test_hidden_and_resource_fork_files_are_skipped(digits, tmp_path, cli):
    folder = _write_folder(tmp_path / "imgs", to_pixels(digits.split("test").x[:N_SCORED]), "L")
    (folder / "._00000.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")  # AppleDouble header
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    rec = score(folder)
    assert rec["samples"]["n_in_file"] == N_SCORED
    (folder / "broken.png").write_bytes(b"not a png")
    one_line_error(cli("eval", "--dataset", "digits", "--budget", "faults", "--samples", folder, "--out", tmp_path / "o"),
                   "broken.png")


def test_equal_channel_rgb_is_read_as_grey_and_colour_is_refused(digits, tmp_path, cli):
    from torchvision.utils import save_image

    x = digits.split("test").x[:N_SCORED]
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i, img in enumerate((x + 1) / 2):
        save_image(img, folder / f"{i:05d}.png")  # writes three equal channels
    with Image.open(folder / "00000.png") as im:
        assert im.mode == "RGB"
    want = samples_to_tensor(np.round(to_pixels(x) * 255).astype(np.uint8), digits)
    assert torch.equal(samples_to_tensor(read_samples(folder), digits), want)
    rgb = np.repeat(np.round(to_pixels(x) * 255).astype(np.uint8)[:, None], 3, axis=1)
    assert torch.equal(samples_to_tensor(rgb, digits), want)  # (N, 3, H, W)
    assert torch.equal(samples_to_tensor(rgb.transpose(0, 2, 3, 1), digits), want)  # (N, H, W, 3)

    rgb[:, 0] = 255 - rgb[:, 0]
    with pytest.raises(LoadError, match=r"colour.*digits is greyscale") as info:
        samples_to_tensor(rgb, digits)
    assert "\n" not in str(info.value)
    np.save(tmp_path / "colour.npy", rgb)
    one_line_error(cli("eval", "--dataset", "digits", "--budget", "faults", "--samples", tmp_path / "colour.npy",
                       "--out", tmp_path / "o"), "greyscale")


# -- value range ------------------------------------------------------------------------------


def test_a_value_range_unlike_the_datasets_is_warned_and_can_be_stated(digits, tmp_path, cli):
    x = digits.split("train").x[:N_SCORED].numpy()
    np.save(tmp_path / "right.npy", x)
    np.save(tmp_path / "unit.npy", (x + 1) / 2)
    right, unit = score(tmp_path / "right.npy"), score(tmp_path / "unit.npy")
    assert right["samples"]["warnings"] == []
    [warning] = unit["samples"]["warnings"]
    assert "[-1, 1]" in warning and "--value-range" in warning
    stated = score(tmp_path / "unit.npy", value_range=(0.0, 1.0))
    assert stated["samples"]["warnings"] == [] and stated["samples"]["value_range"] == [0.0, 1.0]
    assert values(stated) == pytest.approx(values(right), rel=1e-6, abs=1e-9)
    assert values(unit)["fid"] > values(right)["fid"]

    args = ("eval", "--dataset", "digits", "--budget", "faults", "--out", tmp_path / "o", "--samples", tmp_path / "unit.npy")
    res = cli(*args)
    assert res.exit_code == 0 and "warning:" in res.output and "--value-range 0,1" in res.output, res.output
    res = cli(*args, "--value-range", "0,1")
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    for bad in ("0", "1,0", "a,b"):
        res = cli(*args, "--value-range", bad)
        assert res.exit_code == 2 and "--value-range" in res.output and "Traceback" not in res.output, res.output
    with pytest.raises(LoadError, match=r"outside the stated value range \[0, 0.5\]"):
        score(tmp_path / "unit.npy", value_range=(0.0, 0.5))


# -- text ---------------------------------------------------------------------------------------


def test_text_with_a_byte_order_mark_and_token_id_arrays(tmp_path):
    synth = SyntheticLanguage()
    ids = synth.split("test").x[:20]
    lines = synth.decode(ids)
    (tmp_path / "plain.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "bom.txt").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    np.save(tmp_path / "ids.npy", ids.numpy())
    plain = score(tmp_path / "plain.txt", "synthlang")
    assert values(score(tmp_path / "bom.txt", "synthlang")) == values(plain)
    assert values(score(tmp_path / "ids.npy", "synthlang")) == values(plain)
    (tmp_path / "short.txt").write_text("abc\n")
    with pytest.raises(LoadError, match=r"token ids.*\.npy"):
        score(tmp_path / "short.txt", "synthlang")


# -- FID reference split ------------------------------------------------------------------------


def test_eval_fid_reference_reaches_the_metric_and_the_fingerprint(digits, tmp_path, cli):
    np.save(tmp_path / "s.npy", digits.split("train").x[:N_SCORED].numpy())
    args = ("eval", "--dataset", "digits", "--budget", "faults", "--samples", tmp_path / "s.npy")
    assert cli(*args, "--out", tmp_path / "train").exit_code == 0
    res = cli(*args, "--out", tmp_path / "test", "--fid-reference", "test")
    assert res.exit_code == 0, res.output
    [train], _ = load_records([tmp_path / "train"])
    [test], _ = load_records([tmp_path / "test"])
    assert train["fingerprint_fields"]["metrics"]["image_fidelity"]["reference_split"] == "train"
    assert test["fingerprint_fields"]["metrics"]["image_fidelity"]["reference_split"] == "test"
    assert test["fingerprint"] != train["fingerprint"] and test["spec_hash"] != train["spec_hash"]
    assert test["eval_options"] == {"fid_reference_split": "test"}
    assert values(test)["fid"] != values(train)["fid"]
    assert values(test)["pixel_swd"] == values(train)["pixel_swd"]  # only FID's reference changed
    res = cli(*args, "--out", tmp_path / "x", "--fid-reference", "val")
    assert res.exit_code == 2 and "--fid-reference" in res.output


def test_run_fid_reference_reaches_the_metric_and_the_fingerprint(tmp_path, cli):
    args = ("run", "--plugins", "clamped", "--datasets", "digits,8gaussians", "--budget", "faults")
    assert cli(*args, "--out", tmp_path / "default").exit_code == 0
    res = cli(*args, "--out", tmp_path / "test", "--fid-reference", "test")
    assert res.exit_code == 0, res.output
    default = {r["dataset"]: r for r in load_records([tmp_path / "default"])[0]}
    test = {r["dataset"]: r for r in load_records([tmp_path / "test"])[0]}
    assert {r["status"] for r in [*default.values(), *test.values()]} == {"ok"}
    fields = test["digits"]["fingerprint_fields"]["metrics"]["image_fidelity"]
    assert fields["reference_split"] == "test"
    assert test["digits"]["fingerprint"] != default["digits"]["fingerprint"]
    # the option is about image FID: toy2d runs stay the same runs
    assert test["8gaussians"]["spec_hash"] == default["8gaussians"]["spec_hash"]
    assert test["8gaussians"]["fingerprint"] == default["8gaussians"]["fingerprint"]
