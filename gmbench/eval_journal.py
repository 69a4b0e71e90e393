"""Evaluation journal: what an interrupted run had already evaluated, so ``--resume`` keeps it.

Evaluation is most of an image diffusion run's time (``ddpm`` on digits at ``small``, in the
published records: 152 s of training, then 2,070 s of sampling and scoring over 4 samplers x
the NFE grid), so a run preempted while sampling should not start its evaluation over. Training
already resumes from its checkpoints (:mod:`gmbench.checkpointing`); after the last stage the
checkpoint holds the trained weights, so a resumed run goes straight to evaluation, and this
journal then gives it the model metrics and every (sampler, NFE) setting the killed attempt
finished.

The journal is ``eval.json`` in the run's checkpoint folder, rewritten atomically (temporary
file, then rename) after the model metrics and after each setting, so a kill leaves either the
old or the new file, never half of one. A part with an error (a setting cut by the evaluation
cap, a likelihood stopped at its share of it, a sampler that ran out of memory) is not kept: the
next attempt, perhaps with larger caps (``GMBENCH_CAP_SCALE``), tries it again. The journal is
used only by an attempt with the same key: the sha256 of the trained state dict, the record's
protocol fingerprint and its provenance (code revision, versions, device, threads), and
whether deterministic algorithms are on. Every reused value is
then one the attempt would compute itself: each setting samples from its own seeded generator
(:func:`gmbench.evaluate._sample_and_score`) and methods draw sampling randomness only from it
(the :meth:`~gmbench.method.Method.sample` contract), so skipping the settings already done
changes none of the others (``tests/test_preemption.py`` checks the resumed record against an
uninterrupted one). The seconds stored with each part are its measured times; the evaluation
cap counts them, so a resumed evaluation stops where an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

VERSION = 1
FILENAME = "eval.json"


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict: names, dtypes, shapes and raw bytes, in name order."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        if not isinstance(value, torch.Tensor):  # a module's get_extra_state(): any picklable object
            h.update(f"{name}|extra|{value!r}|".encode())
            continue
        t = value.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cell_key(sampler: str, nfe: int) -> str:
    return f"{sampler}@{nfe}"


class EvalJournal:
    """The parts of one run's evaluation already done, keyed by ``key``.

    ``model``: ``{"entries": [...], "seconds": s, "calls": n}`` of the model metrics (``calls``:
    their network calls, absent from journals written before it was counted), or None.
    ``cells``: per ``cell_key``, ``{"entries": [...], "cost": {...} or None, "sampling_s": s,
    "metrics_s": s}`` (``cost`` None when the sampler failed and the entry carries its error).
    """

    def __init__(self, folder: str | Path, key: dict):
        self.path = Path(folder) / FILENAME
        self.key = dict(key)
        self.model: dict | None = None
        self.cells: dict[str, dict] = {}
        self.reused_model = False
        self.reused_cells = 0
        self.reused_s = 0.0
        self.broken = False

    @classmethod
    def open(cls, folder: str | Path, key: dict) -> "EvalJournal":
        """The journal in ``folder`` if it was written for ``key``; else an empty one (a
        missing, unreadable or foreign file is ignored and overwritten on the first save)."""
        journal = cls(folder, key)
        try:
            saved = json.loads(journal.path.read_text())
        except (OSError, ValueError):
            return journal
        if isinstance(saved, dict) and saved.get("version") == VERSION and saved.get("key") == journal.key:
            journal.model = saved.get("model")
            journal.cells = dict(saved.get("cells") or {})
        return journal

    @property
    def elapsed_s(self) -> float:
        """Measured seconds of the parts held: what the evaluation cap has already spent on them."""
        total = float(self.model["seconds"]) if self.model else 0.0
        return total + sum(float(c["sampling_s"]) + float(c["metrics_s"]) for c in self.cells.values())

    def save(self) -> None:
        """Write the journal; a journal that cannot be written is dropped with a warning (it is
        a convenience for resuming: the evaluation itself goes on)."""
        import warnings

        from gmbench.checkpointing import _atomic_write
        from gmbench.records import _json_default

        if self.broken:
            return
        try:
            text = json.dumps({"version": VERSION, "key": self.key, "model": self.model, "cells": self.cells},
                              sort_keys=True, default=_json_default)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        except (OSError, TypeError, ValueError) as exc:
            self.broken = True
            warnings.warn(f"gmbench: evaluation journal {self.path} not written ({exc}); "
                          "an interrupted evaluation will start over", stacklevel=2)

    def record_model(self, entries: list[dict], seconds: float, calls: int | None = None) -> None:
        if any(e.get("error") for e in entries):  # cut by the cap, or failed: the next attempt retries
            return
        self.model = {"entries": entries, "seconds": seconds, "calls": calls}
        self.save()

    def record_cell(self, sampler: str, nfe: int, entries: list[dict], cost: dict | None,
                    sampling_s: float, metrics_s: float) -> None:
        if cost is None or any(e.get("error") for e in entries):  # a failed sampler or metric: retried
            return
        self.cells[cell_key(sampler, nfe)] = {"entries": entries, "cost": cost, "sampling_s": sampling_s,
                                             "metrics_s": metrics_s}
        self.save()

    def take_model(self) -> dict | None:
        """The stored model-metric part (counted as reused), or None."""
        if self.model is None:
            return None
        self.reused_model = True
        self.reused_s += float(self.model["seconds"])
        return self.model

    def take_cell(self, sampler: str, nfe: int) -> dict | None:
        """The stored part of one setting (counted as reused), or None."""
        done = self.cells.get(cell_key(sampler, nfe))
        if done is not None:
            self.reused_cells += 1
            self.reused_s += float(done["sampling_s"]) + float(done["metrics_s"])
        return done

    def summary(self) -> dict:
        """What this attempt took from an earlier one (the record's ``eval_resumed``)."""
        return {"model_metrics": self.reused_model, "settings": self.reused_cells,
                "seconds": round(self.reused_s, 3)}


def remove(folder: str | Path) -> None:
    """Delete a run's journal (its record is written: nothing is left to resume)."""
    try:
        (Path(folder) / FILENAME).unlink()
    except FileNotFoundError:
        pass
