"""Real datasets through HuggingFace ``datasets``: hub image and text sets, a user's
own image folder or text file.

``datasets`` is imported inside functions so that importing gmbench stays cheap.

Offline behaviour: gmbench's CLI sets ``HF_DATASETS_OFFLINE=1`` unless ``--online``
is given. Under that variable (or ``HF_HUB_OFFLINE``) a dataset that is not in the
HuggingFace cache fails at once with :class:`DatasetUnavailableError`, instead of
``datasets`` retrying the network for ~25 s. ``datasets`` reads the variable only
when it is first imported, so :func:`_load_hf` also applies it to
``datasets.config`` for the duration of each load, which makes it hold when
``datasets`` was imported earlier (a notebook, a test session).

Every class here has ``embedded = False``; their splits come from the source's own
train/test split (or, for a user's folder or file, a deterministic split by
``data_seed``), optionally subsampled to ``n_train``/``n_test`` by ``data_seed``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from gmbench.data.base import EMBEDDED_ALTERNATIVES, Dataset, DatasetUnavailableError, DataSpec, Split

_TRUE = {"1", "ON", "YES", "TRUE"}  # as datasets and huggingface_hub read them
_ENCODE_SLICE = 1 << 24  # characters encoded at a time
# builder for a local data_files override, by file suffix
_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def hub_offline() -> bool:
    """True when the user asked HuggingFace libraries to stay offline."""
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


@contextlib.contextmanager
def _honour_offline_env():
    import datasets

    saved = datasets.config.HF_HUB_OFFLINE
    if hub_offline():
        datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def _builder_for(data_files) -> str:
    if isinstance(data_files, dict):
        data_files = next(iter(data_files.values()))
    if isinstance(data_files, (list, tuple)):
        data_files = data_files[0]
    suffix = Path(str(data_files)).suffix.lower()
    if suffix not in _BUILDERS:
        raise ValueError(f"cannot tell the format of {data_files!r}: use one of {sorted(_BUILDERS)}")
    return _BUILDERS[suffix]


def _load_hf(label: str, path: str, split: str | None, *, data_files=None, cache_dir=None, **builder_kwargs):
    """Load one split (or, with ``split=None``, all splits) with ``datasets.load_dataset``.

    ``path`` is a hub id or a packaged builder (``imagefolder``, ``text``). With
    ``data_files`` the files are read by the builder their suffix names instead
    (``.parquet``, ``.arrow``, ...), which is how a hub set can be loaded from a
    local copy: hub sets are stored as parquet with their features in its metadata.
    """
    import datasets

    local = data_files is not None or path in ("imagefolder", "text")
    if data_files is not None and path not in ("imagefolder", "text"):
        path = _builder_for(data_files)
    try:
        with _honour_offline_env():
            return datasets.load_dataset(
                path, split=split, data_files=data_files, cache_dir=cache_dir, **builder_kwargs
            )
    except (ConnectionError, FileNotFoundError) as exc:
        if local:
            raise
        why = (
            "offline mode is on (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE; gmbench --online allows the download)"
            if hub_offline()
            else f"the download failed ({type(exc).__name__})"
        )
        raise DatasetUnavailableError(
            f"dataset {label!r} ({path}) needs a download or a copy in the HuggingFace cache: it is not "
            f"cached and {why}. Embedded datasets need no download: {EMBEDDED_ALTERNATIVES}."
        ) from exc


def _subset(n_total: int, n: int | None, data_seed: int, salt: int) -> np.ndarray | None:
    """Indices of a seeded subset of size ``n``, or None for all."""
    if n is None or n >= n_total:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([data_seed, salt]))
    return np.sort(rng.choice(n_total, size=n, replace=False))


def _fraction_split(ds, split: str, test_fraction: float, data_seed: int):
    """A seeded share ``test_fraction`` of ``ds`` as the test split, the rest as train."""
    n_test = max(1, round(len(ds) * test_fraction))
    order = np.random.default_rng(np.random.SeedSequence([data_seed, 2])).permutation(len(ds))
    return ds.select(np.sort(order[:n_test] if split == "test" else order[n_test:]))


# Images ---------------------------------------------------------------------


def _images_to_tensor(images, channels: int, size: int | None) -> torch.Tensor:
    """PIL images to a float tensor ``(N, C, H, W)`` in [-1, 1]."""
    from PIL import ImageOps

    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for im in images:
        im = im.convert(mode)
        if size is not None and im.size != (size, size):
            # centre crop to square, then resize: keeps the aspect ratio of objects
            im = ImageOps.fit(im, (size, size))
        arrays.append(np.asarray(im, dtype=np.uint8))
    if not arrays:
        raise ValueError("no images to load")
    a = np.stack(arrays)
    a = a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(a)).float() / 127.5 - 1.0


class HubImageDataset(Dataset):
    """Base of image sets loaded with ``datasets``: 256 levels, scaled to [-1, 1].

    Args:
        data_seed: seeds the subsampling to ``n_train``/``n_test``.
        n_train, n_test: keep a seeded subset of this size (None: all).
        data_files: load local files (e.g. ``{"train": "train.parquet", ...}``)
            instead of the hub copy; same columns expected.
        cache_dir: HuggingFace datasets cache (default: the user's).
    """

    modality = "image"
    primary_metric = "fid"
    embedded = False
    hf_path: ClassVar[str] = ""
    image_column: ClassVar[str] = "image"
    label_column: ClassVar[str] = "label"
    channels: ClassVar[int] = 1
    size: ClassVar[int] = 28
    num_classes: ClassVar[int | None] = 10

    def __init__(self, data_seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                 data_files=None, cache_dir: str | None = None):
        super().__init__(data_seed)
        self.n_train, self.n_test = n_train, n_test
        self.data_files, self.cache_dir = data_files, cache_dir

    def spec(self) -> DataSpec:
        return DataSpec(name=self.name, modality="image", shape=(self.channels, self.size, self.size),
                        levels=256, value_range=(-1.0, 1.0), num_classes=self.num_classes)

    def _hf_split(self, split: str):
        return _load_hf(self.name, self.hf_path, split, data_files=self.data_files, cache_dir=self.cache_dir)

    def _load(self, split: str) -> Split:
        return self._to_split(self._hf_split(split), split)

    def _to_split(self, ds, split: str) -> Split:
        n = self.n_train if split == "train" else self.n_test
        keep = _subset(len(ds), n, self.data_seed, salt=0 if split == "train" else 1)
        if keep is not None:
            ds = ds.select(keep)
        x = _images_to_tensor(ds[self.image_column], self.channels, self.size)
        labels = list(ds[self.label_column]) if self.label_column in ds.column_names else []
        # imagefolder adds an empty (None) label column when there are no class folders
        y = torch.tensor(labels, dtype=torch.long) if labels and None not in labels else None
        return Split(x=x, y=y)

    def fingerprint_fields(self) -> dict:
        return {**super().fingerprint_fields(), "source": self.hf_path if self.data_files is None else "local files"}


class MNIST(HubImageDataset):
    name = "mnist"
    description = "MNIST handwritten digits, 28x28 grey, 60k train / 10k test, 10 classes"
    citation = "LeCun, Bottou, Bengio & Haffner (1998), Gradient-based learning applied to document recognition"
    hf_path = "ylecun/mnist"


class FashionMNIST(HubImageDataset):
    name = "fashion_mnist"
    description = "Fashion-MNIST clothing images, 28x28 grey, 60k train / 10k test, 10 classes"
    citation = "Xiao, Rasul & Vollgraf (2017), Fashion-MNIST, arXiv:1708.07747"
    hf_path = "zalando-datasets/fashion_mnist"


class CIFAR10(HubImageDataset):
    name = "cifar10"
    description = "CIFAR-10 natural images, 32x32 RGB, 50k train / 10k test, 10 classes"
    citation = "Krizhevsky (2009), Learning Multiple Layers of Features from Tiny Images"
    hf_path = "uoft-cs/cifar10"
    image_column = "img"
    channels = 3
    size = 32


class ImageFolderDataset(HubImageDataset):
    """A folder of the user's images, via the ``imagefolder`` builder.

    Images in class sub-folders get labels; ``train/`` and ``test/`` sub-folders
    give the splits, otherwise a seeded ``test_fraction`` of the images is the test
    split. Every image is centre-cropped and resized to ``size``.
    """

    name = "imagefolder"
    description = "a folder of your own images (imagefolder:/path)"
    num_classes = None

    def __init__(self, path: str | None = None, data_seed: int = 0, size: int = 32, channels: int = 3,
                 test_fraction: float = 0.1, n_train: int | None = None, n_test: int | None = None,
                 cache_dir: str | None = None):
        if path is None:
            raise ValueError("imagefolder needs a folder: use imagefolder:/path/to/images")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"imagefolder: no such folder {path!r}")
        super().__init__(data_seed, n_train, n_test, cache_dir=cache_dir)
        self.path, self.size, self.channels, self.test_fraction = str(path), size, channels, test_fraction
        self._labels: int | None = None

    def _hf_split(self, split: str):
        splits = _load_hf(self.name, "imagefolder", None, data_dir=self.path, cache_dir=self.cache_dir)
        if self.label_column in splits["train"].column_names:
            self._labels = splits["train"].features[self.label_column].num_classes
        if "test" in splits:
            return splits[split]
        return _fraction_split(splits["train"], split, self.test_fraction, self.data_seed)

    def spec(self) -> DataSpec:
        # the classes are known once the folder is read
        labelled = self.split("train").y is not None
        return DataSpec(name=self.name, modality="image", shape=(self.channels, self.size, self.size),
                        levels=256, value_range=(-1.0, 1.0), num_classes=self._labels if labelled else None)

    def fingerprint_fields(self) -> dict:
        return {**super().fingerprint_fields(), "source": self.path}


# Text -------------------------------------------------------------------------


class HubTextDataset(Dataset):
    """Base of character-level text sets: the vocabulary is the sorted set of
    characters of the train split; examples are consecutive, non-overlapping
    windows of ``seq_len`` characters.

    Args:
        data_seed: seeds the subsampling to ``n_train``/``n_test`` windows.
        seq_len: characters per window.
        n_train, n_test: keep a seeded subset of this many windows (None: all).
        data_files: load local files instead of the hub copy (same column).
        cache_dir: HuggingFace datasets cache (default: the user's).
    """

    modality = "text"
    primary_metric = "test_bpc"
    embedded = False
    hf_path: ClassVar[str] = ""
    text_column: ClassVar[str] = "text"
    #: joins the rows of a split into one stream
    row_separator: ClassVar[str] = "\n"

    def __init__(self, data_seed: int = 0, seq_len: int = 256, n_train: int | None = None,
                 n_test: int | None = None, data_files=None, cache_dir: str | None = None):
        super().__init__(data_seed)
        self.seq_len, self.n_train, self.n_test = seq_len, n_train, n_test
        self.data_files, self.cache_dir = data_files, cache_dir
        self._vocab: str | None = None

    def _text(self, split: str) -> str:
        ds = _load_hf(self.name, self.hf_path, split, data_files=self.data_files, cache_dir=self.cache_dir)
        return self.row_separator.join(ds[self.text_column])

    @property
    def vocab(self) -> str:
        """The characters, in id order."""
        if self._vocab is None:
            self.split("train")
        return self._vocab

    def spec(self) -> DataSpec:
        return DataSpec(name=self.name, modality="text", shape=(self.seq_len,), vocab_size=len(self.vocab))

    def _load(self, split: str) -> Split:
        text = self._text(split)
        if split == "train":
            self._vocab = "".join(sorted(set(text)))
        ids = self._encode_stream(text, split)
        n_windows = len(ids) // self.seq_len
        if n_windows == 0:
            raise ValueError(
                f"{self.name}: the {split} split has {len(ids)} characters, fewer than seq_len={self.seq_len}"
            )
        windows = ids[: n_windows * self.seq_len].reshape(n_windows, self.seq_len)
        n = self.n_train if split == "train" else self.n_test
        keep = _subset(n_windows, n, self.data_seed, salt=0 if split == "train" else 1)
        if keep is not None:
            windows = windows[keep]
        return Split(x=torch.from_numpy(windows.astype(np.int64)))

    def _encode_stream(self, text: str, split: str) -> np.ndarray:
        table = np.frombuffer(self.vocab.encode("utf-32-le"), dtype=np.uint32)  # sorted code points
        dtype = np.uint8 if len(table) <= 256 else np.int32
        parts, dropped = [], 0
        # slice by slice, so a 100M-character corpus never has 8-byte ids in memory
        for start in range(0, len(text), _ENCODE_SLICE):
            codes = np.frombuffer(text[start : start + _ENCODE_SLICE].encode("utf-32-le"), dtype=np.uint32)
            ids = np.searchsorted(table, codes).clip(max=len(table) - 1)
            known = table[ids] == codes
            dropped += int((~known).sum())
            parts.append(ids[known].astype(dtype))
        if dropped:
            # the vocabulary is the train split's; a test character it lacks cannot
            # be scored by any model, so it is dropped (and reported)
            warnings.warn(f"{self.name}: dropped {dropped} {split} characters not in the train vocabulary")
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def encode(self, text: str) -> torch.Tensor:
        """Characters to ids; raises ValueError for a character not in the vocabulary."""
        index = {c: i for i, c in enumerate(self.vocab)}
        missing = sorted(set(text) - index.keys())
        if missing:
            raise ValueError(f"{self.name}: characters {missing!r} are not in the vocabulary")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str | list[str]:
        """Ids to text; a 2-D batch gives a list of strings."""
        ids = torch.as_tensor(ids)
        if ids.dim() == 2:
            return [self.decode(row) for row in ids]
        vocab = self.vocab
        return "".join(vocab[i] for i in ids.tolist())

    def fingerprint_fields(self) -> dict:
        source = self.hf_path if self.data_files is None else "local files"
        fields = super().fingerprint_fields()
        return {**fields, "seq_len": self.seq_len, "vocab_size": len(self.vocab), "source": source}


class Text8(HubTextDataset):
    name = "text8"
    description = "text8: first 10^8 characters of cleaned English Wikipedia (a-z and space), 90M/5M/5M split"
    citation = "Mahoney (2011), Large Text Compression Benchmark, http://mattmahoney.net/dc/textdata.html"
    hf_path = "afmck/text8"


class TinyShakespeare(HubTextDataset):
    name = "tiny_shakespeare"
    description = "Tiny Shakespeare: 1.1M characters of Shakespeare's plays, 65-character vocabulary"
    citation = "Karpathy (2015), char-rnn, https://github.com/karpathy/char-rnn"
    hf_path = "karpathy/tiny_shakespeare"


class TextFileDataset(HubTextDataset):
    """A text file of the user's, via the ``text`` builder; the last ``test_fraction``
    of its characters is the test split (contiguous, so no window straddles both)."""

    name = "textfile"
    description = "a text file of your own, character level (textfile:/path)"

    def __init__(self, path: str | None = None, data_seed: int = 0, seq_len: int = 256, test_fraction: float = 0.1,
                 n_train: int | None = None, n_test: int | None = None, cache_dir: str | None = None):
        if path is None:
            raise ValueError("textfile needs a file: use textfile:/path/to/file.txt")
        if not Path(path).is_file():
            raise FileNotFoundError(f"textfile: no such file {path!r}")
        super().__init__(data_seed, seq_len, n_train, n_test, cache_dir=cache_dir)
        self.path, self.test_fraction = str(path), test_fraction

    def _text(self, split: str) -> str:
        # sample_by="document": the whole file as one row, line breaks kept
        ds = _load_hf(self.name, "text", "train", data_files=self.path, cache_dir=self.cache_dir, sample_by="document")
        text = self.row_separator.join(ds["text"])
        cut = len(text) - round(len(text) * self.test_fraction)
        return text[:cut] if split == "train" else text[cut:]

    def fingerprint_fields(self) -> dict:
        return {**super().fingerprint_fields(), "source": self.path}


HUB_DATASETS = (MNIST, FashionMNIST, CIFAR10, Text8, TinyShakespeare, ImageFolderDataset, TextFileDataset)
