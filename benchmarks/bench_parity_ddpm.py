"""Parity of gmbench's DDPM with diffusers' schedulers at equal counted training FLOPs.

Trains, on 8gaussians, for each seed:

(a) gmbench's ``ddpm`` (2006.11239) with the shared toy2d MLP, through gmbench's own
    training loop (``gmbench.training.train``: its FLOP meter, data order and optimizer);
(b) a plain MLP (``[x, sinusoidal(t)]`` -> 4 x Linear+SiLU -> Linear, about the same
    parameter count) driven by diffusers' ``DDPMScheduler`` for training and ancestral
    sampling and ``DDIMScheduler`` (2010.02502, eta 0) for deterministic sampling,
    trained for as many steps as fit the same FLOP allowance, each step's FLOPs counted
    with ``torch.utils.flop_counter.FlopCounterMode`` exactly as the host counts them.

Both sides use the same recipe, so that what differs is the implementation: batch 256,
Adam at gmbench's toy2d default lr (3e-3), gradient-norm clipping at 1, an EMA of the
weights with decay ``min(0.9999, (1 + k) / (10 + k))`` (diffusers' ``EMAModel`` on side b,
which implements the same formula), linear betas 1e-4..0.02 over T = 1000, the same data
order (batches drawn from a CPU generator seeded with the seed) and the same network
initialisation seed. diffusers' schedulers are configured with ``clip_sample=False``
(their default clips x0 to [-1, 1], which is meant for images), ``timestep_spacing=
"trailing"`` (so that the chain starts at t = T as gmbench's does; 2305.08891) and, for
the ancestral sampler, ``variance_type="fixed_large"`` (sigma^2 = beta, gmbench's default
``sigma2="beta"``); ``--variance small`` compares the beta-tilde variance on both sides.

Scores: gmbench's sliced W2 (``gmbench.metrics.distances.sliced_wasserstein``, 256
projections, as the toy2d metric) of 2,000 samples against the test split, for ancestral
and DDIM at NFE 10, 20, 50, 100, plus the share of far-off samples (norm > 8; the data's
norm is at most about 6) and the largest sample norm. A third row, "cross", runs
gmbench's samplers (``DDPM.sample``) on the network diffusers' side trained: against the
diffusers row it compares the samplers alone on one network, against the gmbench row the
backbones and training alone with one sampler. It also prints what each EMA
network returns at t = T for inputs of norm 0.5 ... 10, where the ideal eps is about the
input itself (DDIM multiplies its error there by 1/sqrt(abar_T) ~ 158 in the x0 estimate).

    OMP_NUM_THREADS=1 python benchmarks/bench_parity_ddpm.py [--seeds 5] [--flops 1e12]

diffusers is a benchmark-only dependency: ``pip install -e '.[bench]'``. Results, machine
and what they showed: ``docs/parity.md``.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from gmbench.backbones import count_parameters
from gmbench.budget import SMALL
from gmbench.data.toy2d import EightGaussians
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.metrics.toy2d import SWD_PROJECTIONS
from gmbench.training import train

NFES = (10, 20, 50, 100)
SAMPLERS = ("ancestral", "ddim")
N_SAMPLES = 2000
FAR = 8.0
PROBE_NORMS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 10.0)


class PlainMLP(nn.Module):
    """``[x, sinusoidal(t)]`` -> ``depth`` x (Linear, SiLU) -> Linear: the textbook toy
    diffusion network, with no normalisation anywhere, so its output grows linearly with
    its input far from the data."""

    def __init__(self, dims: int = 2, width: int = 448, depth: int = 4, emb_dim: int = 128) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        layers, d = [], dims + emb_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, dims)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from diffusers.models.embeddings import get_timestep_embedding

        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = get_timestep_embedding(t, self.emb_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.out(self.body(torch.cat([x, emb.to(x.dtype)], dim=1)))


# ------------------------------------------------------------------------- (a) gmbench


def train_gmbench(seed: int, train_x: torch.Tensor, flops: float, lr: float | None, ema: float):
    from gmbench_methods.diffusion.ddpm import DDPM

    budget = replace(SMALL, train_flops={**SMALL.train_flops, "toy2d": flops})
    torch.manual_seed(seed)  # as the runner: network initialisation
    method = DDPM(EightGaussians().spec(), model_size=budget.model_size, lr=lr, ema_decay=ema or None)
    generator = torch.Generator().manual_seed(seed)  # data order
    t0 = time.perf_counter()
    (report,) = train(method, train_x, budget, "toy2d", generator)
    info = {"steps": report.steps, "flops": report.flops, "seconds": time.perf_counter() - t0,
            "params": method.num_parameters()}
    return method, info


def sample_gmbench(method, sampler: str, nfe: int, seed: int, variance: str) -> torch.Tensor:
    method.sigma2 = "beta" if variance == "large" else "beta_tilde"  # sampling-only setting
    g = torch.Generator().manual_seed(10_000 * seed + nfe)
    return method.sample(N_SAMPLES, sampler, nfe, g)


# ------------------------------------------------------------------------ (b) diffusers


def _schedulers(variance: str):
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  clip_sample=False, timestep_spacing="trailing", prediction_type="epsilon")
    ddpm = DDPMScheduler(variance_type="fixed_large" if variance == "large" else "fixed_small", **common)
    return ddpm, DDIMScheduler(set_alpha_to_one=True, **common)


def train_diffusers(seed: int, train_x: torch.Tensor, flops: float, lr: float, ema: float, batch: int):
    from diffusers.training_utils import EMAModel
    from torch.utils.flop_counter import FlopCounterMode

    sched, _ = _schedulers("large")
    torch.manual_seed(seed)
    net = PlainMLP()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ema_model = EMAModel(net.parameters(), decay=ema) if ema else None
    generator = torch.Generator().manual_seed(seed)

    def step(x0: torch.Tensor) -> float:
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],))
        noise = torch.randn_like(x0)
        loss = F.mse_loss(net(sched.add_noise(x0, noise, t), t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    # one step's FLOPs (forward + backward), counted as gmbench's meter counts them
    with FlopCounterMode(display=False) as fc:
        step(train_x[:batch])
    per_step = fc.get_total_flops()
    opt.zero_grad(set_to_none=True)
    steps = int(flops // per_step)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, train_x.shape[0], (batch,), generator=generator)
        step(train_x[idx])
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if ema_model is not None:
            ema_model.step(net.parameters())
    if ema_model is not None:
        ema_model.copy_to(net.parameters())
    net.eval()
    info = {"steps": steps, "flops": steps * per_step, "seconds": time.perf_counter() - t0,
            "params": count_parameters(net)}
    return net, info


@torch.no_grad()
def sample_diffusers(net, sampler: str, nfe: int, seed: int, variance: str) -> torch.Tensor:
    ddpm, ddim = _schedulers(variance)
    sched = ddim if sampler == "ddim" else ddpm
    sched.set_timesteps(nfe)
    g = torch.Generator().manual_seed(10_000 * seed + nfe)
    x = torch.randn(N_SAMPLES, 2, generator=g)
    for t in sched.timesteps:
        eps = net(x, t)
        if sampler == "ancestral":
            x = sched.step(eps, t, x, generator=g).prev_sample
        else:
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    return x


class DiffusersTime(nn.Module):
    """Adapts a network trained on diffusers' integer timesteps ``0..T-1`` to gmbench's
    convention (DDPM calls ``net(x, t / T)`` for ``t`` in ``1..T``; both index abar alike:
    diffusers' ``alphas_cumprod[k]`` is gmbench's ``abar[k + 1]``)."""

    def __init__(self, net: nn.Module, T: int = 1000) -> None:
        super().__init__()
        self.net, self.T = net, T

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, (torch.as_tensor(t) * self.T).round().long() - 1)


def sample_cross(method, net_b, sampler: str, nfe: int, seed: int, variance: str) -> torch.Tensor:
    """gmbench's sampler code driving the diffusers-trained network."""
    saved = method.ema
    method.ema = DiffusersTime(net_b, method.T)  # denoiser() returns the EMA slot
    try:
        return sample_gmbench(method, sampler, nfe, seed, variance)
    finally:
        method.ema = saved


# --------------------------------------------------------------------------- reporting


@torch.no_grad()
def probe_eps(fn) -> list[float]:
    """Mean |eps_theta(x, T)| over 256 directions, for each input norm in PROBE_NORMS."""
    ang = torch.linspace(0, 2 * math.pi, 257)[:-1]
    d = torch.stack([ang.cos(), ang.sin()], dim=1)
    return [float(fn(r * d).norm(dim=1).mean()) for r in PROBE_NORMS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--flops", type=float, default=SMALL.train_flops["toy2d"], help="training FLOPs per run")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam lr for both (gmbench's toy2d default)")
    ap.add_argument("--ema", type=float, default=0.9999, help="EMA decay for both; 0 turns it off")
    ap.add_argument("--variance", choices=("large", "small"), default="large",
                    help="ancestral sigma^2: beta (large, gmbench's default) or beta-tilde (small)")
    args = ap.parse_args()

    ds = EightGaussians()
    train_x, test_x = ds.split("train").x, ds.split("test").x
    batch = SMALL.batch_size["toy2d"]
    impls = ("gmbench", "diffusers", "cross")
    swd = {(i, s, n): [] for i in impls for s in SAMPLERS for n in NFES}
    far = {k: [] for k in swd}
    maxnorm = {k: [] for k in swd}
    probes = {i: [] for i in impls[:2]}
    infos = {i: [] for i in impls[:2]}
    t_all = time.perf_counter()
    for seed in range(args.seeds):
        method, info_a = train_gmbench(seed, train_x, args.flops, args.lr, args.ema)
        net_b, info_b = train_diffusers(seed, train_x, args.flops, args.lr, args.ema, batch)
        infos["gmbench"].append(info_a)
        infos["diffusers"].append(info_b)
        den = method.denoiser()
        probes["gmbench"].append(probe_eps(lambda x: method.eps(den, x, method.T)))
        probes["diffusers"].append(probe_eps(lambda x: net_b(x, torch.tensor(999))))
        for impl, fn in (("gmbench", lambda s, n: sample_gmbench(method, s, n, seed, args.variance)),
                         ("diffusers", lambda s, n: sample_diffusers(net_b, s, n, seed, args.variance)),
                         ("cross", lambda s, n: sample_cross(method, net_b, s, n, seed, args.variance))):
            for sampler in SAMPLERS:
                for nfe in NFES:
                    x = fn(sampler, nfe).float().cpu()
                    key = (impl, sampler, nfe)
                    norms = x.norm(dim=1)
                    ok = torch.isfinite(x).all()
                    swd[key].append(sliced_wasserstein(x, test_x, n_projections=SWD_PROJECTIONS, seed=seed)
                                    if ok else float("inf"))
                    far[key].append(float((norms > FAR).double().mean()) if ok else 1.0)
                    maxnorm[key].append(float(norms.max()))
        print(f"seed {seed}: gmbench {info_a['steps']} steps {info_a['flops']:.3g} FLOPs {info_a['seconds']:.0f}s; "
              f"diffusers {info_b['steps']} steps {info_b['flops']:.3g} FLOPs {info_b['seconds']:.0f}s; "
              f"DDIM-10 swd {swd[('gmbench', 'ddim', 10)][-1]:.3f} / {swd[('diffusers', 'ddim', 10)][-1]:.3f}",
              flush=True)

        # the table so far, so that an interrupted run still reports its finished seeds
        report(args, impls, infos, swd, far, maxnorm, probes, seed + 1, time.perf_counter() - t_all)


def report(args, impls, infos, swd, far, maxnorm, probes, seeds_done: int, seconds: float) -> None:
    print()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"seeds {seeds_done} of {args.seeds}, FLOPs {args.flops:.3g}, lr {args.lr}, EMA {args.ema}, "
          f"ancestral variance {args.variance}, {seconds:.0f}s so far")
    for impl in impls[:2]:
        i0 = infos[impl][0]
        print(f"{impl}: {i0['params']} parameters, {i0['steps']} steps, {i0['flops']:.4g} counted FLOPs per run")
    print()
    print("SW2: median over seeds [min-max]; ratio: gmbench / diffusers medians; far: mean share of norm > 8; "
          "cross: gmbench's sampler on the diffusers-trained net")
    print()
    print("| sampler | NFE | gmbench | diffusers | ratio | cross | far gmbench / diffusers / cross | max norm gmbench / diffusers |")
    print("|---|---|---|---|---|---|---|---|")

    def cell(key):
        v = swd[key]
        return f"{statistics.median(v):.3f} [{min(v):.3f}-{max(v):.3f}]"

    for sampler in SAMPLERS:
        for nfe in NFES:
            k = {i: (i, sampler, nfe) for i in impls}
            ratio = statistics.median(swd[k["gmbench"]]) / statistics.median(swd[k["diffusers"]])
            fars = " / ".join(f"{statistics.mean(far[k[i]]):.2%}" for i in impls)
            print(f"| {sampler} | {nfe} | {cell(k['gmbench'])} | {cell(k['diffusers'])} | {ratio:.2f} | {cell(k['cross'])} "
                  f"| {fars} | {max(maxnorm[k['gmbench']]):.1f} / {max(maxnorm[k['diffusers']]):.1f} |")
    print()
    print("|eps_theta(x, T)| (EMA net, mean over seeds) for |x| = " + ", ".join(f"{r:g}" for r in PROBE_NORMS))
    for impl in impls[:2]:
        cols = list(zip(*probes[impl]))
        print(f"  {impl:9s}: " + ", ".join(f"{statistics.mean(c):.2f}" for c in cols))
    print(flush=True)


if __name__ == "__main__":
    main()
