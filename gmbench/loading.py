"""Evaluate weights or samples instead of training: checkpoints and external samples.

Checkpoints are safetensors files only. A ``.pt``/``.pth``/``.ckpt``/``.bin``
file is a pickle, and unpickling runs whatever code the file carries, so gmbench
refuses it and says how to convert it once, in an environment you trust.
Tensor names are those of :meth:`gmbench.method.Method.state_dict`
(``<module>.<parameter>``), which is what ``gmbench run --save-checkpoints``
writes, so a trained run's weights can be evaluated again with ``--load``.

External samples (``gmbench eval``) come as a ``.npy``/``.npz`` array (read
with ``allow_pickle=False``), a folder of images or a text file, and are
checked against the dataset's shape, dtype and range before any metric sees
them. Loading from a model hub by id is not supported yet: download the file
and pass its path.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from gmbench.method import Method, MethodError
from gmbench.records import sha256_file

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".joblib")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class LoadError(ValueError):
    """A checkpoint or samples file gmbench will not or cannot use; one-line message."""


# -- checkpoints ---------------------------------------------------------------------


def _refuse_pickle(path: Path) -> LoadError:
    target = path.with_suffix(".safetensors").name
    return LoadError(
        f"{path.name} is a pickle-based checkpoint and gmbench never unpickles files (loading one can run code); "
        f"convert it once where you trust it: python -c \"import torch, safetensors.torch as st; "
        f"st.save_file(torch.load('{path}', weights_only=True), '{target}')\" (tensor names: <module>.<parameter>)"
    )


def _check_safetensors_header(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch's zip format, or a raw pickle
        raise _refuse_pickle(path)
    if len(head) < 9 or head[8:9] != b"{" or struct.unpack("<Q", head[:8])[0] > os.path.getsize(path):
        raise LoadError(f"{path} is not a safetensors file")


def check_checkpoint_path(path: str | Path) -> Path:
    """Refuse, with one line, anything but an existing safetensors file."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _refuse_pickle(path)
    if not path.is_file():
        raise LoadError(f"no such checkpoint file: {path}")
    _check_safetensors_header(path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = check_checkpoint_path(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadError(f"cannot read safetensors file {path}: {first}") from None


def load_weights(method: Method, path: str | Path) -> dict:
    """Load a checkpoint into ``method``; return ``{"path", "sha256", "tensors"}`` for the record.

    Raises :class:`LoadError` for a file it refuses and
    :class:`~gmbench.method.MethodError` for tensors that do not fit the method.
    """
    state = read_checkpoint(path)
    modules = method.modules()
    stray = sorted(k for k in state if not any(k.startswith(m + ".") for m in modules))
    if stray:
        raise MethodError(
            f"checkpoint does not fit method {method.name!r}: tensor {stray[0]!r} belongs to none of its modules "
            f"({', '.join(modules)}); was it saved from another method or model size?"
        )
    method.load_state_dict(state)
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path), "tensors": len(state)}


def checkpoint_path(checkpoint_dir: str | Path, spec) -> Path:
    """Where ``--save-checkpoints`` puts a run's weights: the record's name, ``.safetensors``."""
    return Path(checkpoint_dir) / (Path(spec.filename).stem + ".safetensors")


def save_checkpoint(method: Method, path: str | Path, metadata: dict | None = None) -> dict:
    """Write ``method``'s weights as safetensors, atomically; return ``{"path", "sha256"}``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (tied weights)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in method.state_dict().items()}
    meta = {"gmbench_method": method.name, **{k: json.dumps(v, sort_keys=True, default=str) for k, v in (metadata or {}).items()}}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


# -- external samples ------------------------------------------------------------------


class Pixels(np.ndarray):
    """Images read from files: floats in [0, 1] whatever the files' bit depth,
    ``(N, H, W)`` for grey or ``(N, H, W, 3)`` for RGB."""


def read_samples(path: str | Path):
    """Raw samples from a file: a numpy array, :class:`Pixels`, or a list of text lines.

    ``.npy``/``.npz`` are read with ``allow_pickle=False``; a folder is read as
    images (sorted by name; hidden files such as macOS ``._x.png`` resource
    forks and ``.DS_Store`` are skipped); any other file as UTF-8 text, one
    sample per line (a leading byte-order mark is dropped).
    """
    path = Path(path)
    if not path.exists():
        raise LoadError(f"no such samples file or folder: {path}")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise LoadError(f"{path.name}: gmbench never unpickles files; save the samples with numpy.save as a .npy array")
    if path.is_dir():
        return _read_image_folder(path)
    if suffix in (".npy", ".npz"):
        magic = {".npy": b"\x93NUMPY", ".npz": b"PK"}[suffix]  # NumPy's header; a .npz is a zip archive
        with open(path, "rb") as fh:
            if fh.read(len(magic)) != magic:
                raise LoadError(f"{path.name} is not a {suffix} file (no NumPy {'header' if suffix == '.npy' else 'zip archive'}); "
                                f"save the samples with numpy.{'save' if suffix == '.npy' else 'savez'}")
        try:
            data = np.load(path, allow_pickle=False)
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise LoadError(f"{path.name} holds Python objects, which gmbench never unpickles; save a numeric array") from None
            raise LoadError(f"cannot read {path.name}: {exc}") from None
        if suffix == ".npy":
            return data
        with data:
            keys = list(data.files)
            key = keys[0] if len(keys) == 1 else "samples" if "samples" in keys else None
            if key is None:
                raise LoadError(f"{path.name} holds arrays {', '.join(keys)}: keep one, or name the samples 'samples'")
            return data[key]
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()  # -sig: Windows editors start files with a BOM
    except UnicodeDecodeError:
        raise LoadError(f"{path.name} is neither .npy/.npz, an image folder nor UTF-8 text") from None


def sample_files(folder: Path) -> list[Path]:
    """The image files of a samples folder, by name; hidden files (``.DS_Store``,
    AppleDouble ``._*`` resource forks that macOS leaves beside copies) are not samples."""
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file())


def _read_image_folder(path: Path) -> Pixels:
    files = sample_files(path)
    if not files:
        raise LoadError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    arrays = [_read_image(f) for f in files]
    if any(a.ndim == 3 for a in arrays):  # a mix of grey and RGB files: grey as three equal channels
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in arrays]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        first = next(f for f, a in zip(files, arrays) if a.shape != arrays[0].shape)
        raise LoadError(f"images in {path} differ in size: {files[0].name} is {arrays[0].shape}, {first.name} is "
                        f"{arrays[files.index(first)].shape} (height, width[, channels])")
    return np.stack(arrays).view(Pixels)


def _read_image(f: Path) -> np.ndarray:
    """One image as floats in [0, 1]: ``(H, W)`` grey or ``(H, W, 3)`` RGB, each bit depth
    scaled by its own full scale (8-bit / 255, 16-bit / 65535, 1-bit 0/1)."""
    from PIL import Image

    try:
        with Image.open(f) as im:
            im.load()
            mode = im.mode
            if mode.startswith("I;16"):
                return np.asarray(im, dtype=np.float32) / 65535.0
            if mode in ("I", "F"):  # 32-bit integer or float pixels: no full scale to divide by
                raise LoadError(f"cannot read image {f.name}: its pixels are 32-bit {'floats' if mode == 'F' else 'integers'} "
                                f"(mode {mode}) with no fixed full scale; save 8- or 16-bit images, or a .npy array")
            if "A" in mode or "a" in mode or "transparency" in im.info:
                im = im.convert("LA" if mode in ("LA", "La", "L", "1") else "RGBA")
                rgba = np.asarray(im)
                if (rgba[..., -1] < 255).any():
                    raise LoadError(f"cannot read image {f.name}: it has transparent pixels, and gmbench will not guess "
                                    "a background; save it without an alpha channel")
                return rgba[..., 0].astype(np.float32) / 255.0 if im.mode == "LA" else rgba[..., :3].astype(np.float32) / 255.0
            grey = im.convert("L") if mode in ("1", "L") else im.convert("RGB")  # palette, CMYK, YCbCr...: RGB
            return np.asarray(grey, dtype=np.float32) / 255.0
    except LoadError:
        raise
    except Image.UnidentifiedImageError:
        raise LoadError(f"cannot read {f}: not an image file PIL recognises; remove it from the samples folder") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadError(f"cannot read image {f}: {first}") from None


def parse_value_range(text: str) -> tuple[float, float]:
    """``"0,1"`` -> ``(0.0, 1.0)``; ValueError (one line) for anything else."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        lo = hi = None
    if lo is None or not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"{text!r}: give the samples' range as LOW,HIGH with LOW < HIGH, e.g. 0,1 or 0,255")
    return lo, hi


def samples_to_tensor(raw, dataset, value_range: tuple[float, float] | None = None, warn=None) -> torch.Tensor:
    """Convert raw samples to the dataset's own format, or raise a one-line LoadError.

    Images: ``(N, C, H, W)`` or ``(N, H, W, C)`` (``(N, H, W)`` for one
    channel), either uint8 pixels ``0..255`` (as image files hold them, whatever
    the dataset's own quantisation) or floats already in the data range; with
    ``value_range`` ``(a, b)``, numbers in ``[a, b]`` rescaled to the data range.
    Three equal channels become one for a greyscale dataset. Values that cover
    only part of the data range (floats in [0, 1] for a [-1, 1] dataset) are
    scored as given, and ``warn`` (a callable) gets a one-line warning.
    toy2d: floats ``(N, 2)``. Text: integer ids ``(N, L)`` or lines of exactly
    ``L`` characters of the dataset's vocabulary.
    """
    from gmbench.metrics.base import MetricError, check_samples

    spec = dataset.spec()
    if value_range is not None and spec.modality != "image":
        raise LoadError(f"--value-range applies to image samples; {spec.name} holds {spec.modality} data")
    if isinstance(raw, list):
        x = _encode_lines(raw, dataset, spec)
    else:
        arr = np.asarray(raw)
        if arr.dtype.kind not in "biuf":
            raise LoadError(f"samples have dtype {arr.dtype}; expected numbers")
        if spec.modality == "image":
            if isinstance(raw, Pixels):
                if value_range is not None:
                    raise LoadError("--value-range applies to .npy/.npz arrays; image files are scaled by their own bit depth")
                value_range = (0.0, 1.0)
            x = _image_tensor(arr, spec, value_range, warn or (lambda message: None))
        else:
            x = {"toy2d": _toy2d_tensor, "text": _text_tensor}[spec.modality](arr, spec)
    if len(x) == 0:
        raise LoadError("the samples file holds no samples")
    try:
        return check_samples(x, dataset)
    except MetricError as exc:
        raise LoadError(str(exc)) from None


def _image_tensor(arr: np.ndarray, spec, value_range, warn) -> torch.Tensor:
    c, h, w = spec.shape
    if arr.ndim == 3 and c == 1:
        arr = arr[:, None]
    if arr.ndim == 4 and arr.shape[1:] != (c, h, w) and arr.shape[1:] == (h, w, arr.shape[3]) and arr.shape[3] in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)
    if c == 1 and arr.ndim == 4 and arr.shape[1:] == (3, h, w):
        arr = _grey_from_rgb(arr, spec)
    if arr.ndim != 4 or arr.shape[1:] != (c, h, w):
        raise LoadError(f"image samples have shape {arr.shape}; expected (N, {c}, {h}, {w}) or (N, {h}, {w}, {c})")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise LoadError(f"{int((~np.isfinite(arr)).reshape(len(arr), -1).any(1).sum())} image samples contain NaN or inf")
    lo, hi = spec.value_range
    if value_range is not None:  # stated by the user (or fixed by the files' bit depth): rescale
        a, b = value_range
        tol = 1e-3 * (b - a)
        if arr.min() < a - tol or arr.max() > b + tol:
            raise LoadError(f"image samples span [{arr.min():.3g}, {arr.max():.3g}], outside the stated value range [{a:g}, {b:g}]")
        x = (arr.astype(np.float64) - a) / (b - a) * (hi - lo) + lo
        return torch.from_numpy(np.clip(x, lo, hi).astype(np.float32))
    if arr.dtype.kind in "biu":
        if arr.dtype != np.uint8:
            raise LoadError(f"integer image samples must be uint8 pixels 0..255, got {arr.dtype}; or pass floats in "
                            f"[{lo:g}, {hi:g}], or state their range with --value-range")
        x = torch.from_numpy(arr.astype(np.float32)) / 255.0 * (hi - lo) + lo
        assumed = (0.0, 255.0)
    else:
        tol = 1e-3 * (hi - lo)
        if arr.min() < lo - tol or arr.max() > hi + tol:
            raise LoadError(f"float image samples must lie in the data range [{lo:g}, {hi:g}]; got [{arr.min():.3g}, "
                            f"{arr.max():.3g}] (pass uint8 levels instead, or state their range with --value-range)")
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        assumed = (lo, hi)
    _check_coverage(arr, x, spec, assumed, warn)
    return x


def _grey_from_rgb(arr: np.ndarray, spec) -> np.ndarray:
    """Three equal channels (what torchvision's ``save_image`` writes for grey images) -> one."""
    tol = 1e-6 * float(np.abs(arr).max() or 1) if arr.dtype.kind == "f" else 0
    differ = (np.abs(arr[:, 1:].astype(np.float64) - arr[:, :1]) > tol).reshape(len(arr), -1).any(1)
    if differ.any():
        raise LoadError(f"image samples are colour: their 3 channels differ in {int(differ.sum())} of {len(arr)} samples, "
                        f"but {spec.name} is greyscale (1 channel), and a grey conversion would be gmbench's guess; "
                        "convert them to grey yourself if that is what the model meant")
    return arr[:, :1]


# Generated images cover nearly all of the data range (digits: black background, white
# strokes); samples confined to a part of it were most likely made for another range.
COVERAGE_WARN = 0.75
COMMON_RANGES = ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (0.0, 65535.0))


def _check_coverage(arr: np.ndarray, x: torch.Tensor, spec, assumed: tuple[float, float], warn) -> None:
    """Warn when ``x`` (already in the data range) covers little of it; ``arr`` is the input as given."""
    lo, hi = spec.value_range
    if float(x.max() - x.min()) >= COVERAGE_WARN * (hi - lo):
        return
    a, b = float(arr.min()), float(arr.max())
    guess = next((r for r in COMMON_RANGES if r != assumed and r[0] <= a and b <= r[1]), None)
    hint = f"{guess[0]:g},{guess[1]:g}" if guess else "LOW,HIGH"
    read_as = "uint8, read as pixel levels 0..255" if arr.dtype == np.uint8 else "floats, read as values of the data range"
    warn(f"the samples span [{a:.3g}, {b:.3g}] ({read_as}), which covers only part of {spec.name}'s data range "
         f"[{lo:g}, {hi:g}]; scored as given. If they were made for another range, state it (--value-range {hint}) "
         "and they are rescaled")


def _toy2d_tensor(arr: np.ndarray, spec) -> torch.Tensor:
    if arr.ndim != 2 or arr.shape[1:] != tuple(spec.shape):
        raise LoadError(f"toy2d samples have shape {arr.shape}; expected (N, {spec.shape[0]})")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _text_tensor(arr: np.ndarray, spec) -> torch.Tensor:
    if arr.dtype.kind not in "iu":
        raise LoadError(f"text samples must be integer token ids, got {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != spec.shape[0]:
        raise LoadError(f"text samples have shape {arr.shape}; expected (N, {spec.shape[0]}) token ids")
    return torch.from_numpy(arr.astype(np.int64))


def _encode_lines(lines: list[str], dataset, spec) -> torch.Tensor:
    if spec.modality != "text":
        raise LoadError(f"a text file cannot hold {spec.modality} samples; use a .npy array")
    length = spec.shape[0]
    ids_hint = f"pass token ids as an integer (N, {length}) .npy array instead (the way for samples that contain newlines)"
    if not hasattr(dataset, "encode"):
        raise LoadError(f"dataset {spec.name} cannot encode text; {ids_hint}")
    lines = [ln for ln in lines if ln]
    for i, ln in enumerate(lines):
        if len(ln) != length:
            raise LoadError(f"line {i + 1} has {len(ln)} characters; every sample line must have exactly {length} (seq_len), "
                            f"or {ids_hint}")
    try:
        return torch.stack([torch.as_tensor(dataset.encode(ln), dtype=torch.long) for ln in lines]) if lines else torch.zeros(0, length, dtype=torch.long)
    except ValueError as exc:
        raise LoadError(f"{str(exc).splitlines()[0]}; or {ids_hint}") from None
