"""Parity of gmbench's Score SDE and consistency-model samplers with diffusers' on one trained network.

diffusers has no training code for these two methods, only their samplers:
``ScoreSdeVeScheduler`` (Song et al. 2021, arXiv 2011.13456: the VE reverse-diffusion predictor
and the Langevin corrector with the signal-to-noise step) and ``CMStochasticIterativeScheduler``
(Song et al. 2023, arXiv 2303.01469, Algorithm 1). So each side samples **the same network**,
trained once by gmbench at a budget (default ``small``) on 8gaussians. Training FLOPs are then
equal by construction, and a gap is in the sampler code alone.

(a) ``score-sde`` with ``sde="ve"`` (diffusers implements VE only): gmbench's ``pc`` and
    ``reverse-diffusion`` at N steps against diffusers' pipeline loop (``step_correct`` then
    ``step_pred`` at each of its N levels, returning the last ``prev_sample_mean``). diffusers is
    configured with gmbench's ``sigma_min``, ``sigma_max``, ``snr`` and ``sampling_eps``. Its score
    input is the level's sigma, mapped to gmbench's time ``t = ln(sigma/sigma_min) / ln(sigma_max/sigma_min)``.
    The two grids differ slightly: gmbench's N steps go from ``t = 1`` to ``t = eps``; diffusers'
    N levels go from ``sigma_max`` to ``sigma_min`` and its last step from ``sigma_min`` to 0.
(b) ``consistency`` (CT, its defaults): gmbench's ``multistep`` at S steps against diffusers with
    ``num_train_timesteps = S + 1`` and timesteps ``S-1 ... 0``, which gives the same Karras
    times (the first S of S + 1 points from T to eps), gmbench's ``sigma_data``, ``eps``, ``T``
    and ``clip_denoised=False`` (a toy). The network gets ``c_in x`` and ``ln(sigma)/4`` on both
    sides (diffusers passes ``250 ln sigma``; gmbench's backbones scale their time input by 1000).

Each cell: sliced W2 (256 projections, the toy2d metric) of 5,000 samples against the test
split, for sampling seeds 0..R-1 (median and range), and the network calls per sample counted
on both sides with a forward hook (they must be equal).

    OMP_NUM_THREADS=1 python benchmarks/bench_parity_samplers.py [--budget small] [--seed 0] [--repeats 5]
        [--steps 10,20,50,100] [--cm-steps 1,2,3,5] [--extra-level]

diffusers is a benchmark-only dependency: ``pip install -e '.[bench]'``. Results: docs/parity_samplers.md.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from gmbench.budget import LARGE, SMALL, SMOKE, STANDARD
from gmbench.data.toy2d import EightGaussians
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.metrics.toy2d import SWD_PROJECTIONS
from gmbench.training import train
from gmbench_methods.diffusion.consistency import ConsistencyModel
from gmbench_methods.diffusion.score_sde import ScoreSDE

BUDGETS = {b.name: b for b in (SMOKE, SMALL, STANDARD, LARGE)}


class CallCounter:
    """Counts forward calls of a module (one per batch) through a hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def score_sde_diffusers(m: ScoreSDE, net, n: int, steps: int, corrector: bool, seed: int) -> torch.Tensor:
    from diffusers import ScoreSdeVeScheduler

    sde = m.sde
    sched = ScoreSdeVeScheduler(num_train_timesteps=steps, snr=m.snr, sigma_min=sde.sigma_min,
                                sigma_max=sde.sigma_max, sampling_eps=m.sampling_eps)
    sched.set_timesteps(steps)
    sched.set_sigmas(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *m.data.shape, generator=g) * sched.init_noise_sigma
    x_mean = x
    for i, t in enumerate(sched.timesteps):
        sigma = float(sched.sigmas[i])
        t_gm = math.log(sigma / sde.sigma_min) / sde.log_ratio
        if corrector:
            x = sched.step_correct(m.score(net, x, t_gm), x, generator=g).prev_sample
        out = sched.step_pred(m.score(net, x, t_gm), t, x, generator=g)
        x, x_mean = out.prev_sample, out.prev_sample_mean
    return x_mean


def consistency_diffusers(m: ConsistencyModel, net, n: int, steps: int, seed: int) -> torch.Tensor:
    from diffusers import CMStochasticIterativeScheduler

    sched = CMStochasticIterativeScheduler(num_train_timesteps=steps + 1, sigma_min=m.eps, sigma_max=m.T,
                                           sigma_data=m.sigma_data, rho=m.rho, clip_denoised=False)
    sched.set_timesteps(timesteps=list(range(steps - 1, -1, -1)))
    assert torch.allclose(sched.sigmas[:-1].double(), torch.tensor(m.sample_times(steps), dtype=torch.float64),
                          rtol=1e-5), (sched.sigmas, m.sample_times(steps))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *m.data.shape, generator=g) * sched.init_noise_sigma
    for t in sched.timesteps:
        scaled = sched.scale_model_input(x, t)
        out = net(scaled, torch.full((n,), float(t) / 1000.0))
        x = sched.step(out, t, x, generator=g).prev_sample
    return x


def cell(sample, ref: torch.Tensor, counter: CallCounter, repeats: int, n: int) -> tuple[list[float], float]:
    values, calls = [], []
    for seed in range(repeats):
        counter.calls = 0
        with torch.no_grad():
            x = sample(seed)
        calls.append(counter.calls)
        values.append(sliced_wasserstein(x, ref, n_projections=SWD_PROJECTIONS))
    assert len(set(calls)) == 1, calls
    return values, calls[0]


def trained(method, budget, train_x, seed: int) -> float:
    """Train ``method`` through gmbench's loop at ``budget``; the seconds it took."""
    t0 = time.time()
    train(method, train_x, budget, "toy2d", torch.Generator().manual_seed(seed))
    method.train(False)
    return time.time() - t0


def score_sde_part(args, budget, data, train_x, ref) -> None:
    torch.manual_seed(args.seed)
    sde = ScoreSDE(data.spec(), model_size=budget.model_size, sde="ve")
    seconds = trained(sde, budget, train_x, args.seed)
    net = sde.denoiser()
    counter = CallCounter(net)
    print(f"\n## score-sde (VE, sigma {sde.sde.sigma_min:g}..{sde.sde.sigma_max:g}, snr {sde.snr:g}), "
          f"trained in {seconds:.0f} s\n")
    print("| sampler | N | calls per sample (gmbench / diffusers) | gmbench swd | diffusers swd |")
    print("|---|---|---|---|---|")
    for steps in map(int, args.steps.split(",")):
        for name, corrector in (("pc", True), ("reverse-diffusion", False)):
            ours, c1 = cell(lambda s: sde.sample(args.n, name, steps, torch.Generator().manual_seed(s)),
                            ref, counter, args.repeats, args.n)
            levels = steps + 1 if args.extra_level else steps
            theirs, c2 = cell(lambda s: score_sde_diffusers(sde, net, args.n, levels, corrector, s),
                              ref, counter, args.repeats, args.n)
            print(f"| {name} | {steps} | {c1} / {c2} | {fmt(ours)} | {fmt(theirs)} |", flush=True)


def consistency_part(args, budget, data, train_x, ref) -> None:
    torch.manual_seed(args.seed)
    cm = ConsistencyModel(data.spec(), model_size=budget.model_size)
    seconds = trained(cm, budget, train_x, args.seed)
    net = cm.sampling_net()
    counter = CallCounter(net)
    print(f"\n## consistency (CT, sigma_data {cm.sigma_data:g}, eps {cm.eps:g}, T {cm.T:g}), "
          f"trained in {seconds:.0f} s\n")
    print("| S | times | calls per sample (gmbench / diffusers) | gmbench swd | diffusers swd | max abs difference of the samples (seed 0) |")
    print("|---|---|---|---|---|---|")
    for steps in map(int, args.cm_steps.split(",")):
        ours, c1 = cell(lambda s: cm.sample(args.n, "multistep", steps, torch.Generator().manual_seed(s)),
                        ref, counter, args.repeats, args.n)
        theirs, c2 = cell(lambda s: consistency_diffusers(cm, net, args.n, steps, s), ref, counter, args.repeats, args.n)
        times = ", ".join(f"{t:.3g}" for t in cm.sample_times(steps))
        with torch.no_grad():
            diff = (cm.sample(args.n, "multistep", steps, torch.Generator().manual_seed(0))
                    - consistency_diffusers(cm, net, args.n, steps, 0)).abs().max().item()
        print(f"| {steps} | {times} | {c1} / {c2} | {fmt(ours)} | {fmt(theirs)} | {diff:.2g} |", flush=True)



def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="small", choices=sorted(BUDGETS))
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--repeats", type=int, default=5, help="sampling seeds per cell")
    parser.add_argument("-n", type=int, default=5000, help="samples per cell")
    parser.add_argument("--steps", default="10,20,50,100", help="Score SDE steps N ('' skips Score SDE)")
    parser.add_argument("--cm-steps", default="1,2,3,5", help="consistency steps S ('' skips the consistency model)")
    parser.add_argument("--extra-level", action="store_true",
                        help="give diffusers' Score SDE chain N + 1 levels (one more call per step kind): its last "
                             "step goes from sigma_min to 0, so N + 1 of its levels span the range N of gmbench's do")
    args = parser.parse_args()
    torch.set_num_threads(1)
    budget = BUDGETS[args.budget]
    data = EightGaussians()
    train_x, ref = data.split("train").x, data.split("test").x
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"budget {budget.name}, training seed {args.seed}, {args.repeats} sampling seeds, {args.n} samples")

    if args.steps:  # --steps '': the consistency model only
        score_sde_part(args, budget, data, train_x, ref)
    if args.cm_steps:  # --cm-steps '': Score SDE only
        consistency_part(args, budget, data, train_x, ref)


if __name__ == "__main__":
    main()
