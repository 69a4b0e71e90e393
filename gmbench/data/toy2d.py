"""Two-dimensional toy distributions with exact (or numerically exact) densities.

Every density here is a mixture of *curves blurred by isotropic Gaussian
noise*: a component is a curve ``gamma(s)``, ``s ~ U(0, 1)``, and a point is
``gamma(s) + sigma * eps``. Its density ``p(x) = sum_c w_c E_s N(x; gamma_c(s),
sigma^2 I)`` is computed by a midpoint rule over ``s`` with enough nodes that
neighbouring nodes are far closer than ``sigma`` (numerically exact). A point
mass (8gaussians) is a curve that does not move. The checkerboard is the one
exception: uniform on alternate squares, with density ``1/area`` inside and
zero outside, so its sample NLL is constant on the support and -inf off it.
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar

import torch

from gmbench.data.base import Dataset, DataSpec, Split

Curve = Callable[[torch.Tensor], torch.Tensor]  # s (M,) in [0,1] -> points (M, 2)


class Toy2D(Dataset):
    """Base of the toy datasets: fixed-size train/test splits from one seed."""

    modality: ClassVar[str] = "toy2d"
    primary_metric: ClassVar[str] = "swd"
    citation: ClassVar[str] = "gmbench synthetic 2-D benchmark densities"
    n_train: ClassVar[int] = 20000
    n_test: ClassVar[int] = 5000

    def spec(self) -> DataSpec:
        return DataSpec(name=self.name, modality="toy2d", shape=(2,))

    def _load(self, split: str) -> Split:
        # Distinct generator streams for the two splits, both fixed by data_seed.
        offset = 0 if split == "train" else 1_000_003
        g = torch.Generator().manual_seed(self.data_seed * 2_000_003 + offset)
        n = self.n_train if split == "train" else self.n_test
        return Split(self.sample(n, g))

    def _load_val(self) -> Split:
        # a fresh draw from the true density, on its own generator stream
        g = torch.Generator().manual_seed(self.data_seed * 2_000_003 + 2_000_001)
        return Split(self.sample(self.n_test, g))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class CurveMixture(Toy2D):
    """Mixture of noisy curves; subclasses give ``curves``, ``weights``, ``sigma``."""

    sigma: ClassVar[float]
    # Node spacing along each curve stays below sigma / 4, where the Gaussian
    # sum's relative error is far below float32 precision (Poisson summation).
    quadrature_nodes: ClassVar[int] = 500
    chunk: ClassVar[int] = 4096  # points per batch: bounds the (N, M) distance matrix

    def curves(self) -> list[Curve]:
        raise NotImplementedError

    def weights(self) -> torch.Tensor:
        n = len(self.curves())
        return torch.full((n,), 1.0 / n, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        curves = self.curves()
        comp = torch.multinomial(self.weights(), n, replacement=True, generator=generator)
        s = torch.rand(n, generator=generator, dtype=torch.float64)
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        out = torch.empty(n, 2, dtype=torch.float64)
        for c, curve in enumerate(curves):
            idx = comp == c
            out[idx] = curve(s[idx])
        return (out + self.sigma * noise).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double().reshape(-1, 2)
        m = self.quadrature_nodes
        s = (torch.arange(m, dtype=torch.float64) + 0.5) / m  # midpoint rule on [0, 1]
        log_norm = -math.log(2 * math.pi * self.sigma**2)
        nodes = [curve(s) for curve in self.curves()]  # each (M, 2)
        log_w = [math.log(float(w)) - math.log(m) for w in self.weights()]
        out = []
        for xc in x.split(self.chunk):
            terms = [
                torch.logsumexp(log_norm - torch.cdist(xc, nd).pow(2) / (2 * self.sigma**2), dim=1) + lw
                for nd, lw in zip(nodes, log_w)
            ]
            out.append(torch.logsumexp(torch.stack(terms, dim=1), dim=1))
        return torch.cat(out).float() if out else torch.empty(0)


class EightGaussians(CurveMixture):
    name = "8gaussians"
    suite_default = True
    description = "8 Gaussians (std 0.5) evenly spaced on a circle of radius 4"
    sigma = 0.5
    quadrature_nodes = 1  # point masses: the rule is exact

    def curves(self):
        def centre(k):
            a = 2 * math.pi * k / 8
            return lambda s: torch.tensor([4 * math.cos(a), 4 * math.sin(a)], dtype=torch.float64).expand(len(s), 2)

        return [centre(k) for k in range(8)]


class TwoMoons(CurveMixture):
    name = "moons"
    description = "two interleaved half circles (radius 2) blurred by noise of std 0.2"
    sigma = 0.2

    def curves(self):
        def upper(s):
            a = math.pi * s
            return torch.stack([2 * torch.cos(a) - 1, 2 * torch.sin(a) - 0.5], dim=1)

        def lower(s):
            a = math.pi * s
            return torch.stack([1 - 2 * torch.cos(a), 0.5 - 2 * torch.sin(a)], dim=1)

        return [upper, lower]


class TwoSpirals(CurveMixture):
    name = "spirals"
    description = "two interleaved spiral arms (1.5 turns, radius 0.3 to 4) with noise of std 0.15"
    sigma = 0.15
    quadrature_nodes = 1000  # arms ~20 long: spacing 0.02 < sigma / 7

    def curves(self):
        def arm(phase):
            def f(s):
                theta = 3 * math.pi * s
                r = 0.3 + 3.7 * s
                return torch.stack([r * torch.cos(theta + phase), r * torch.sin(theta + phase)], dim=1)

            return f

        return [arm(0.0), arm(math.pi)]


class Rings(CurveMixture):
    name = "rings"
    description = "four concentric circles (radii 1-4, weight proportional to length), noise std 0.1"
    sigma = 0.1
    radii: ClassVar[tuple[float, ...]] = (1.0, 2.0, 3.0, 4.0)
    quadrature_nodes = 1000  # longest ring 25: spacing 0.025 = sigma / 4

    def curves(self):
        def ring(r):
            return lambda s: torch.stack([r * torch.cos(2 * math.pi * s), r * torch.sin(2 * math.pi * s)], dim=1)

        return [ring(r) for r in self.radii]

    def weights(self):
        w = torch.tensor(self.radii, dtype=torch.float64)
        return w / w.sum()


class Checkerboard(Toy2D):
    name = "checkerboard"
    description = "uniform on the 8 dark squares of a 4x4 board of 2x2 squares on [-4, 4]^2"
    area: ClassVar[float] = 8 * 4.0

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        cell = torch.randint(0, 8, (n,), generator=generator)
        row = cell // 2
        col = 2 * (cell % 2) + (row % 2)  # dark squares: (row + col) even
        u = torch.rand(n, 2, generator=generator)
        x = -4 + 2 * col + 2 * u[:, 0]
        y = -4 + 2 * row + 2 * u[:, 1]
        return torch.stack([x, y], dim=1)

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        col = torch.floor((x[:, 0] + 4) / 2)
        row = torch.floor((x[:, 1] + 4) / 2)
        in_board = (col >= 0) & (col < 4) & (row >= 0) & (row < 4)
        return in_board & ((row + col) % 2 == 0)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 2)
        inside = self.inside(x)
        out = torch.full((x.shape[0],), -math.inf)
        out[inside] = -math.log(self.area)
        return out


TOY2D_DATASETS = (EightGaussians, Checkerboard, TwoMoons, TwoSpirals, Rings)
