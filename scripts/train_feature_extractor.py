"""Train gmbench's offline image feature extractor on a dataset's train split.

    python scripts/train_feature_extractor.py --dataset digits
    python scripts/train_feature_extractor.py --dataset mnist --epochs 5   # when mnist is cached

Writes ``<out>/<dataset>-cnn.safetensors`` and a JSON sidecar with the
dataset, the test-split accuracy measured at the end, the training settings
and the sha256 of the weights. The image metrics find the weights by dataset
name in ``gmbench/metrics/weights/`` (the default ``--out``) or in the folder
given by the ``extractor_weights_dir`` option / ``GMBENCH_EXTRACTOR_WEIGHTS_DIR``.

The network (:mod:`gmbench.metrics.classifier`) takes uint8 images, so the
training images go through the same float -> uint8 conversion the metric
applies to samples. Augmentation: random shifts of up to ``--shift`` pixels.
Deterministic for a seed on a given machine (CPU, one thread).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "gmbench" / "metrics" / "weights"


def shift_batch(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero = background padding)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    return torch.stack([padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(n)])


def accuracy(net, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(chunk).argmax(1) for chunk in x.split(1024)])
    return float((pred == y).float().mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", help="gmbench dataset name (labelled images)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--shift", type=int, default=None, help="max shift in pixels (default: height // 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from gmbench.data import make_dataset
    from gmbench.metrics.classifier import SmallConvClassifier, save_classifier, to_uint8
    from gmbench.plugins import Registries

    dataset = make_dataset(Registries().datasets, args.dataset)
    spec = dataset.spec()
    if spec.modality != "image":
        print(f"error: {args.dataset} is a {spec.modality} dataset; the feature extractor is for images", file=sys.stderr)
        return 2
    train, test = dataset.split("train"), dataset.split("test")
    if train.y is None or spec.num_classes is None:
        print(f"error: {args.dataset} has no labels; the extractor is trained as a classifier", file=sys.stderr)
        return 2
    x_train, x_test = to_uint8(train.x, spec.value_range), to_uint8(test.x, spec.value_range)
    shift = args.shift if args.shift is not None else max(1, spec.shape[1] // 8)

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    net = SmallConvClassifier(spec.shape[0], spec.num_classes, args.width, spec.shape[1])
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(x_train), generator=g)
        for idx in perm.split(args.batch_size):
            xb = shift_batch(x_train[idx], shift, g)
            loss = F.cross_entropy(net(xb), train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == args.epochs:
            print(f"epoch {epoch + 1}: loss {float(loss.detach()):.4f}, test accuracy {accuracy(net, x_test, test.y):.4f}")
    net.eval()
    sidecar = save_classifier(net, args.out / f"{args.dataset}-cnn.safetensors", {
        "dataset": args.dataset,
        "data_seed": dataset.data_seed,
        "trained_on": "train",
        "n_train": len(x_train),
        "test_accuracy": accuracy(net, x_test, test.y),
        "n_test": len(x_test),
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "shift": shift, "seed": args.seed,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "torch_version": torch.__version__,
        "command": "python scripts/train_feature_extractor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    })
    print(f"wrote {args.out / sidecar['weights']} (test accuracy {sidecar['test_accuracy']:.4f}, sha256 {sidecar['sha256'][:16]}...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
