"""Class conditioning, the host's side: which labels a class-conditional method trains and
samples with.

A method is class-conditional when its instance says so (``Method.class_conditional``, set
from one of its parameters). The host then

* checks that the dataset is labelled (every split carries ``y``) before any work;
* passes each training batch's labels to ``training_step(..., labels=...)``;
* chooses the classes of every sample it asks for: balanced over the dataset's classes (as
  class-conditional FIDs are taken, e.g. 50 images per ImageNet class), in an order the
  sampling generator shuffles, so a seed fixes them and a method cannot pick its easiest
  class. The FID reference is the whole test split, whose classes are about balanced.

Every sample the host draws goes through :func:`draw_samples`, so the classes are the host's
in the timed draw, the sampling audit, the curve points and the conformance kit alike.
"""

from __future__ import annotations

import math

import torch

from gmbench.errors import MethodError


def evaluation_classes(num_classes: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` labels in ``0..num_classes-1``, each class ``n // num_classes`` or one more times,
    shuffled by ``generator`` (the classes that get one more are random too)."""
    offset = int(torch.randint(0, num_classes, (1,), generator=generator, device=generator.device))
    base = (torch.arange(n) + offset) % num_classes
    return base[torch.randperm(n, generator=generator, device=generator.device).cpu()]


def draw_samples(method, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
    """``method.sample(n, sampler, nfe, generator)``, with the host's ``classes=`` for a
    class-conditional method (module doc)."""
    if not method.class_conditional:
        return method.sample(n, sampler, nfe, generator)
    if not method.data.num_classes:
        raise MethodError(f"{method.name}: a class-conditional method samples given a class, and {method.data.name!r} "
                          "has no classes (turn the method's class conditioning off)")
    classes = evaluation_classes(method.data.num_classes, n, generator)
    return method.sample(n, sampler, nfe, generator, classes=classes)


def guidance_options(name: str, data, class_cond, p_uncond, guidance, default_p_uncond: float,
                     default_guidance: float) -> tuple[float, float] | None:
    """A method's class-conditioning parameters, checked: ``None`` when ``class_cond`` is off
    (and then ``p_uncond``/``guidance`` must be unset), else ``(p_uncond, guidance)`` with the
    method's defaults filled in. Each problem is a one-line MethodError naming ``name``."""
    if not isinstance(class_cond, bool):
        raise MethodError(f"{name}: class_cond must be true or false, not {class_cond!r}")
    if not class_cond:
        if p_uncond is not None or guidance is not None:
            raise MethodError(f"{name}: p_uncond and guidance apply to a class-conditional model: add class_cond=true")
        return None
    if not data.num_classes:
        raise MethodError(f"{name}: class_cond=true needs a labelled dataset; {data.name!r} has no classes "
                          "(an image folder is labelled by class sub-folders)")
    p_uncond = default_p_uncond if p_uncond is None else p_uncond
    guidance = default_guidance if guidance is None else guidance
    if not 0.0 <= float(p_uncond) < 1.0:
        raise MethodError(f"{name}: p_uncond must be in [0, 1), got {p_uncond!r}")
    if not (isinstance(guidance, (int, float)) and not isinstance(guidance, bool) and math.isfinite(guidance)
            and guidance >= 0):
        raise MethodError(f"{name}: guidance must be a finite number >= 0, got {guidance!r}")
    return float(p_uncond), float(guidance)


def check_conditioning(method, labels: torch.Tensor | None, n_examples: int) -> None:
    """One-line error unless a class-conditional ``method`` has what it needs: a dataset with
    ``num_classes``, training labels for every example, and no likelihood (``p(x|y)`` is not
    ``p(x)``). Nothing to check for an unconditional method."""
    if not method.class_conditional:
        return
    k = method.data.num_classes
    if not k or labels is None:
        raise MethodError(f"{method.name}: class-conditional training needs a labelled dataset; "
                          f"{method.data.name!r} has no labels (an image folder is labelled by class sub-folders; "
                          "or turn the method's class conditioning off)")
    if labels.shape != (n_examples,) or labels.dtype != torch.long:
        raise MethodError(f"{method.name}: the training labels of {method.data.name!r} must be a long tensor of shape "
                          f"({n_examples},), got {labels.dtype} {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise MethodError(f"{method.name}: the labels of {method.data.name!r} must lie in 0..{k - 1} "
                          f"(num_classes {k}), got {int(labels.min())}..{int(labels.max())}")
    if method.likelihood != "none":
        raise MethodError(f"{method.name}: a class-conditional method must declare likelihood 'none' "
                          f"(its p(x|y) is not comparable with p(x)), not {method.likelihood!r}")
