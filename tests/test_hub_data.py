"""HuggingFace-backed datasets, tested on small local fixtures: no test downloads.

Every test runs with HF_DATASETS_OFFLINE=1, as gmbench's CLI does by default, so
the local loaders are shown to work offline and nothing can reach the network.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")
PIL_Image = pytest.importorskip("PIL.Image")

from gmbench.data import hub  # noqa: E402
from gmbench.data.hub import (  # noqa: E402
    CIFAR10,
    EMBEDDED_ALTERNATIVES,
    HUB_DATASETS,
    MNIST,
    DatasetUnavailableError,
    ImageFolderDataset,
    Text8,
    TextFileDataset,
    TinyShakespeare,
    hub_offline,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _png(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL_Image.new("RGB", size, colour).save(path)


def test_import_is_cheap():
    code = "import sys, gmbench.data.hub; assert 'datasets' not in sys.modules, 'datasets imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_class_is_a_non_embedded_dataset():
    for cls in HUB_DATASETS:
        assert cls.embedded is False and cls.name and cls.modality in ("image", "text")
    assert len({cls.name for cls in HUB_DATASETS}) == len(HUB_DATASETS)


def test_hub_offline_reads_both_variables(monkeypatch):
    assert hub_offline()
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert hub_offline()


@pytest.mark.parametrize("cls", [MNIST, CIFAR10, Text8, TinyShakespeare])
def test_missing_hub_dataset_fails_fast_offline(cls, tmp_path, monkeypatch):
    # `datasets` is already imported here (above), before the variable was set by
    # the fixture: the case where datasets alone would ignore it and retry ~25 s.
    # "fast" without a clock: the loader must not even try the network (trying is what
    # costs the retries), so every connection attempt is refused and recorded
    flag_before = datasets.config.HF_HUB_OFFLINE
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(DatasetUnavailableError) as info:
        cls(cache_dir=str(tmp_path / "empty-cache")).split("train")
    assert attempts == []
    message = str(info.value)
    assert "\n" not in message
    assert cls.name in message and "download" in message and "cache" in message
    assert EMBEDDED_ALTERNATIVES in message and "synthlang" in message
    # the library's own offline flag is restored afterwards
    assert datasets.config.HF_HUB_OFFLINE == flag_before


def test_image_folder_with_class_subfolders(tmp_path):
    root = tmp_path / "images"
    for i in range(4):
        _png(root / "black" / f"{i}.png", (24, 20), (0, 0, 0))
        _png(root / "white" / f"{i}.png", (20, 24), (255, 255, 255))
    d = ImageFolderDataset(str(root), size=16, test_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    train, test = d._load("train"), d.split("test")
    assert train.x.shape == (6, 3, 16, 16) and test.x.shape == (2, 3, 16, 16)
    assert train.x.dtype == torch.float32
    assert train.x.min() >= -1.0 and train.x.max() <= 1.0
    spec = d.spec()
    assert spec.shape == (3, 16, 16) and spec.levels == 256 and spec.num_classes == 2
    # labels follow the class folders: black images are all -1, white all +1
    x, y = torch.cat([train.x, test.x]), torch.cat([train.y, test.y])
    names = ["black", "white"]
    for image, label in zip(x, y):
        assert torch.all(image == (-1.0 if names[int(label)] == "black" else 1.0))
    # deterministic split, and a different one for another data_seed
    again = ImageFolderDataset(str(root), size=16, test_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(again.split("test").y, test.y)


def test_image_folder_with_split_folders_and_grey(tmp_path):
    root = tmp_path / "images"
    for i in range(3):
        _png(root / "train" / f"{i}.png", (8, 8), (128, 128, 128))
    _png(root / "test" / "0.png", (8, 8), (0, 0, 0))
    d = ImageFolderDataset(str(root), size=8, channels=1, cache_dir=str(tmp_path / "cache"))
    assert d._load("train").x.shape == (3, 1, 8, 8) and d.split("test").x.shape == (1, 1, 8, 8)
    assert d._load("train").y is None and d.spec().num_classes is None
    assert torch.allclose(d._load("train").x, torch.full((3, 1, 8, 8), 128 / 127.5 - 1), atol=1e-6)


def test_image_folder_bad_path():
    with pytest.raises(ValueError, match="imagefolder:/path"):
        ImageFolderDataset()
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset("/no/such/folder")


def test_text_file_windows_and_vocab(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "_ENCODE_SLICE", 7)  # encode in many slices: no seams allowed
    text = "to be, or not to be: that is the question.\n" * 20 + "Z#"
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    d = TextFileDataset(str(path), seq_len=8, test_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    train = d._load("train")
    cut = len(text) - round(len(text) * 0.2)
    assert d.vocab == "".join(sorted(set(text[:cut])))
    assert d.spec().vocab_size == len(d.vocab) and d.spec().shape == (8,)
    assert train.x.dtype == torch.long and train.x.shape == (cut // 8, 8)
    # the windows are the text, in order, line breaks kept
    assert "".join(d.decode(train.x)) == text[: (cut // 8) * 8]
    assert torch.equal(d.encode(d.decode(train.x[0])), train.x[0])
    # 'Z' and '#' occur only in the test part: dropped, with a warning
    with pytest.warns(UserWarning, match="not in the train vocabulary"):
        test = d.split("test")
    assert int(test.x.max()) < len(d.vocab)
    expected = text[cut:].replace("Z", "").replace("#", "")
    assert "".join(d.decode(test.x)) == expected[: len(expected) // 8 * 8]


def test_text_file_subset_is_seeded(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(chr(97 + (i * 7) % 26) for i in range(4000)))
    def make(seed):
        return TextFileDataset(str(path), data_seed=seed, seq_len=16, n_train=50, cache_dir=str(tmp_path / "c"))

    a, b, c = make(0), make(0), make(1)
    assert a._load("train").x.shape == (50, 16)
    assert torch.equal(a._load("train").x, b._load("train").x)
    assert not torch.equal(a._load("train").x, c._load("train").x)


def _image_parquet(path, n, column, mode, size, seed):
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    pixels = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    features = datasets.Features({column: datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    images = [PIL_Image.fromarray(p, mode=mode) for p in pixels]
    ds = datasets.Dataset.from_dict({column: images, "label": [i % 10 for i in range(n)]}, features=features)
    ds.to_parquet(str(path))
    return pixels


@pytest.mark.parametrize("cls,column,mode", [(MNIST, "image", "L"), (CIFAR10, "img", "RGB")])
def test_hub_image_class_from_local_parquet(cls, column, mode, tmp_path):
    """The hub classes' own loading code, on parquet files shaped like the hub's."""
    size = cls.size
    train_px = _image_parquet(tmp_path / "train.parquet", 12, column, mode, size, seed=0)
    _image_parquet(tmp_path / "test.parquet", 5, column, mode, size, seed=1)
    files = {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}
    d = cls(data_files=files, cache_dir=str(tmp_path / "cache"))
    train, test = d._load("train"), d.split("test")
    assert train.x.shape == (12, *d.spec().shape) and test.x.shape == (5, *d.spec().shape)
    expected = torch.from_numpy(train_px).float() / 127.5 - 1
    expected = expected[:, None] if mode == "L" else expected.permute(0, 3, 1, 2)
    assert torch.allclose(train.x, expected)
    assert train.y.tolist() == [i % 10 for i in range(12)]
    sub = cls(n_train=4, data_files=files, cache_dir=str(tmp_path / "cache"))._load("train")
    assert sub.x.shape[0] == 4 and set(sub.y.tolist()) <= set(train.y.tolist())


def test_hub_text_class_from_local_parquet(tmp_path):
    files = {}
    for split, text in {"train": "First Citizen:\nBefore we proceed\n" * 10, "test": "we proceed\n" * 5}.items():
        files[split] = str(tmp_path / f"{split}.parquet")
        datasets.Dataset.from_dict({"text": [text]}).to_parquet(files[split])
    d = TinyShakespeare(seq_len=10, data_files=files, cache_dir=str(tmp_path / "cache"))
    assert d._load("train").x.shape == (33, 10)
    assert d.decode(d.split("test").x[0]) == "we proceed"
    assert d.fingerprint_fields()["vocab_size"] == len(d.vocab)


def test_hub_validation_split_is_carved_from_train_and_held_out(tmp_path):
    """Loaders' assertions above read the raw train split (``_load``); the suite trains on it
    minus a seeded 15% validation carve, which selection uses and training never sees."""
    from gmbench.data.hub import TextFileDataset as TextFile

    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    d = TextFile(path=str(path), seq_len=10, cache_dir=str(tmp_path / "cache"))
    raw, train, val = d._load("train"), d.split("train"), d.split("val")
    assert len(train) + len(val) == len(raw) and len(val) == round(0.15 * len(raw))
    rows = {tuple(r.tolist()) for r in raw.x}
    assert all(tuple(r.tolist()) in rows for r in torch.cat([train.x, val.x]))
