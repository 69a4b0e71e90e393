"""Training checkpoints: what a preempted or capped run needs to continue bit-identically.

A checkpoint is two files in the run's checkpoint folder, written atomically:

* ``state.safetensors``: every module's state dict (``module.<name>.<key>``),
  every optimizer's tensors (``optim.<name>.<param>.<key>``), the RNG states
  as uint8 tensors (``rng.torch``, ``rng.cuda.<i>``, ``rng.data``: the host's
  data-order generator) and, when ``on_stage_start`` replaced the training
  data, that data (``stage_data``);
* ``state.json``: stage index and reports, the FLOP meter, optimizers'
  non-tensor state, Python's and numpy's global RNG states, the method's
  :meth:`~gmbench.method.Method.training_state`, and the sha256 of the tensors
  file (a checkpoint whose tensors do not match is ignored, never half-loaded).

No pickle anywhere: a checkpoint folder can come from an untrusted place.
The tensors file is written first and the JSON last, each to a temporary name
then renamed, so the JSON's presence means the checkpoint is whole.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

VERSION = 1
TENSORS, SIDECAR = "state.safetensors", "state.json"


@dataclass
class CheckpointPolicy:
    """Where and how often training checkpoints are written.

    Attributes:
        folder: the run's checkpoint folder (created on first write).
        every_s: write at least this often in wall-clock seconds (and at every stage
            boundary and when training stops early).
        every_steps: also write every this many steps (tests use it for determinism).
        resume: continue from the checkpoint in ``folder`` if there is one.
    """

    folder: Path
    every_s: float = 60.0
    every_steps: int | None = None
    resume: bool = False


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _rng_tensors(generator: torch.Generator) -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state(), "rng.data": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = state
    return out


def _py_rng_state() -> dict:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _set_py_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save(policy: CheckpointPolicy, *, method, optimizers: dict, generator: torch.Generator, stage_index: int,
         meter_state: dict | None, reports: list[dict], stage_data: torch.Tensor | None, extra: dict) -> Path:
    """Write a checkpoint of training at a step boundary; return the folder."""
    from safetensors.torch import save_file

    from gmbench.records import sha256_file

    folder = Path(policy.folder)
    folder.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (tied weights)
    tensors = {f"module.{k}": v.detach().cpu().contiguous().clone() for k, v in method.state_dict().items()}
    optim_meta = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        for idx, st in sd["state"].items():
            for key, value in st.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{name}.{idx}.{key}"] = value.detach().cpu().contiguous().clone()
        optim_meta[name] = {"param_groups": sd["param_groups"],
                            "scalars": {str(i): {k: v for k, v in st.items() if not isinstance(v, torch.Tensor)}
                                        for i, st in sd["state"].items()}}
    tensors.update(_rng_tensors(generator))
    if stage_data is not None:
        tensors["stage_data"] = stage_data.detach().contiguous().cpu()
    _atomic_write(folder / TENSORS, lambda tmp: save_file(tensors, tmp))
    sidecar = {
        "version": VERSION, "stage_index": stage_index, "meter": meter_state, "reports": reports,
        "optimizers": optim_meta, "py_rng": _py_rng_state(), "method_state": method.training_state(),
        "tensors_sha256": sha256_file(folder / TENSORS), **extra,
    }
    text = json.dumps(sidecar, sort_keys=True, allow_nan=False)
    _atomic_write(folder / SIDECAR, lambda tmp: Path(tmp).write_text(text))
    return folder


def load(folder: Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(sidecar, tensors) of a whole checkpoint in ``folder``, or None if there is none or it is torn."""
    from safetensors.torch import load_file

    from gmbench.records import sha256_file

    folder = Path(folder)
    if not (folder / SIDECAR).is_file() or not (folder / TENSORS).is_file():
        return None
    try:
        sidecar = json.loads((folder / SIDECAR).read_text())
    except (OSError, ValueError):
        return None
    if sidecar.get("version") != VERSION or sidecar.get("tensors_sha256") != sha256_file(folder / TENSORS):
        return None
    return sidecar, load_file(str(folder / TENSORS))


def restore_optimizer(opt: torch.optim.Optimizer, name: str, sidecar: dict, tensors: dict) -> None:
    meta = sidecar["optimizers"][name]
    state = {}
    prefix = f"optim.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, _, k = key[len(prefix):].partition(".")
            state.setdefault(int(idx), {})[k] = value
    for idx, scalars in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def restore_rng(sidecar: dict, tensors: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.data"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    _set_py_rng_state(sidecar["py_rng"])


def remove(folder: Path) -> None:
    """Delete a run's checkpoint folder (after its record is written)."""
    import shutil

    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # the .checkpoints folder, once it holds no run's checkpoint
    except OSError:
        pass
