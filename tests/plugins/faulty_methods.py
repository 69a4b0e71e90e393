"""Deliberately broken method plugins for the fault-isolation tests.

Each is the fake ``GaussianFit`` with one fault injected, so a fault is the
only thing that differs from a healthy run. ``FAULTS`` maps each to the
error its record must carry. ``FaultsPlugin`` also registers the ``faults``
budget: runs of a fraction of a second with short clock caps, so a hang is
detected in seconds.
"""

from __future__ import annotations

import os
import signal
import time

import torch

from gmbench import hookimpl
from gmbench.budget import Budget
from tests.plugins.fake_methods import GaussianFit, NaNLoss, NaNSamples
from tests.plugins.fake_methods import WrongShape as WrongShapeSamples

FAULT_BUDGET = Budget(
    name="faults",
    train_flops={"toy2d": 2.0e5, "image": 2.0e5, "text": 2.0e5},
    batch_size={"toy2d": 64, "image": 16, "text": 8},
    wall_clock_s=2.0,
    model_size="tiny",
    eval_samples={"toy2d": 256, "image": 32, "text": 8},
    nfe_grid=(2,),
    eval_timeout_s=0.5,
    description="fault-injection tests: short clock caps",
)


class Healthy(GaussianFit):
    name = "healthy"


class RaisesInTraining(GaussianFit):
    name = "raises"

    def training_step(self, stage, batch, step):
        if step == 3:
            raise ValueError("injected: training_step raised")
        return super().training_step(stage, batch, step)


class InfLoss(GaussianFit):
    name = "inf-loss"

    def training_step(self, stage, batch, step):
        loss = super().training_step(stage, batch, step)["adam"]
        return {"adam": loss + float("inf") if step >= 2 else loss}


class HangsInStep(GaussianFit):
    """Blocks inside one training step: the between-step clock check never runs."""

    name = "hangs"

    def training_step(self, stage, batch, step):
        if step == 2:
            time.sleep(3600)
        return super().training_step(stage, batch, step)


class HangsInSampler(GaussianFit):
    """Blocks inside ``sample``, where the evaluation catches a sampler's exceptions."""

    name = "hangs-sampling"

    def sample(self, n, sampler, nfe, generator):
        time.sleep(3600)


class MemoryHog(GaussianFit):
    """Allocates 64 MB blocks inside a step, up to 3 GB (bounded, so an uncapped
    run cannot take a shared machine down; run it only under a smaller cap)."""

    name = "memory-hog"

    def training_step(self, stage, batch, step):
        if step == 1:
            self.blocks = [torch.ones(16 * 2**20) for _ in range(48)]
        return super().training_step(stage, batch, step)


class KilledWorker(GaussianFit):
    """Dies like a process the kernel's OOM killer picks (never run it in-process)."""

    name = "sigkilled"

    def training_step(self, stage, batch, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().training_step(stage, batch, step)


#: method -> text its failed record's error must contain
FAULTS = {
    "raises": "ValueError: injected: training_step raised",
    "nan-loss": "loss of optimizer 'adam' is nan",
    "inf-loss": "loss of optimizer 'adam' is inf",
    "wrong-shape": "samples have shape (256, 3), expected (n, 2)",
    "nan-samples": "samples contain NaN or inf",
    "hangs": "RunHung",
    "hangs-sampling": "RunHung",
    "memory-hog": "out of memory (cap",
    "sigkilled": "WorkerDied: the worker process was killed by SIGKILL",
}

ALL = (Healthy, RaisesInTraining, NaNLoss, InfLoss, WrongShapeSamples, NaNSamples, HangsInStep, HangsInSampler, MemoryHog,
       KilledWorker)


class FaultsPlugin:
    """Registers the given faulty methods (default: all) and the ``faults`` budget."""

    def __init__(self, *classes):
        self.classes = classes or ALL

    @hookimpl
    def gmbench_register_methods(self, register):
        for cls in self.classes:
            register(cls)

    @hookimpl
    def gmbench_register_budgets(self, register):
        register(FAULT_BUDGET)
