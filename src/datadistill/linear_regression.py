"""Section 3.3 of the paper: one GD step of distilled data on linear least squares.

With loss l((d, t), θ) = ||dθ - t||² / 2N and one distilled step
θ1 = θ0 - (η̃/M) d̃ᵀ(d̃θ0 - t̃), reaching the optimum from *every* θ0 needs
I - (η̃/M) d̃ᵀd̃ = 0, hence M ≥ D distilled points. With M < D the component of θ0 in
the null space of d̃ is never moved, so the expected excess loss over θ0 ~ N(0, σ²I)
stays at least σ²/2 times the sum of the D - M smallest eigenvalues of H = dᵀd/N.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LinearProblem:
    """Real data d (N, D), targets t (N,), the least-squares optimum and H = dᵀd/N."""

    d: Tensor
    t: Tensor
    theta_star: Tensor
    hessian: Tensor

    @property
    def dim(self) -> int:
        return self.d.shape[1]

    def excess_loss(self, theta: Tensor) -> Tensor:
        """l(θ) - l(θ*) for a batch of θ (B, D): (θ-θ*)ᵀH(θ-θ*)/2."""
        delta = theta - self.theta_star
        return 0.5 * ((delta @ self.hessian) * delta).sum(-1)


def make_problem(n: int = 200, dim: int = 8, noise: float = 0.1, seed: int = 0) -> LinearProblem:
    """A random full-rank regression problem in float64."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    t = d @ torch.randn(dim, generator=gen, dtype=torch.float64)
    t = t + noise * torch.randn(n, generator=gen, dtype=torch.float64)
    theta_star = torch.linalg.lstsq(d, t.unsqueeze(1)).solution.squeeze(1)
    return LinearProblem(d, t, theta_star, d.T @ d / n)


def one_step(theta0: Tensor, d_tilde: Tensor, t_tilde: Tensor, lr: Tensor) -> Tensor:
    """θ1 = θ0 - (η̃/M) d̃ᵀ(d̃θ0 - t̃) for a batch of θ0 (B, D)."""
    residual = theta0 @ d_tilde.T - t_tilde  # (B, M)
    return theta0 - lr / d_tilde.shape[0] * residual @ d_tilde


def lower_bound(problem: LinearProblem, m: int, theta_scale: float) -> float:
    """Expected excess loss that no M-point one-step distillation can beat (0 when M ≥ D)."""
    if m >= problem.dim:
        return 0.0
    eigenvalues = torch.linalg.eigvalsh(problem.hessian)  # ascending
    return 0.5 * theta_scale**2 * float(eigenvalues[: problem.dim - m].sum())


@dataclass
class LinearDistillation:
    d_tilde: Tensor
    t_tilde: Tensor
    lr: Tensor

    def excess(self, problem: LinearProblem, theta0: Tensor) -> Tensor:
        return problem.excess_loss(one_step(theta0, self.d_tilde, self.t_tilde, self.lr))


def distill_linear(
    problem: LinearProblem, m: int, iterations: int = 3000, theta_scale: float = 1.0,
    batch: int = 64, lr: float = 0.02, seed: int = 0,
) -> LinearDistillation:
    """Algorithm 1 on the linear problem: Adam on (d̃, t̃, η̃) over sampled θ0 ~ N(0, σ²I)."""
    gen = torch.Generator().manual_seed(seed)
    d_tilde = torch.randn(m, problem.dim, generator=gen, dtype=torch.float64).requires_grad_()
    t_tilde = torch.randn(m, generator=gen, dtype=torch.float64).requires_grad_()
    log_lr = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([d_tilde, t_tilde, log_lr], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    for _ in range(iterations):
        theta0 = theta_scale * torch.randn(batch, problem.dim, generator=gen, dtype=torch.float64)
        loss = problem.excess_loss(one_step(theta0, d_tilde, t_tilde, log_lr.exp())).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return LinearDistillation(d_tilde.detach(), t_tilde.detach(), log_lr.detach().exp())


def analysis(dim: int = 8, ms: tuple[int, ...] | None = None, theta_scale: float = 1.0,
             iterations: int = 3000, seed: int = 0) -> list[dict[str, float]]:
    """Excess loss on 4,096 fresh θ0 after distilling M points, beside the lower bound."""
    problem = make_problem(dim=dim, seed=seed)
    ms = ms or tuple(sorted({1, dim // 2, dim - 1, dim, 2 * dim}))
    fresh = theta_scale * torch.randn(4096, dim, generator=torch.Generator().manual_seed(seed + 1),
                                      dtype=torch.float64)
    rows = []
    for m in ms:
        result = distill_linear(problem, m, iterations, theta_scale, seed=seed)
        excess = result.excess(problem, fresh)
        rows.append({"M": m, "D": dim, "excess_mean": float(excess.mean()),
                     "excess_max": float(excess.max()),
                     "lower_bound": lower_bound(problem, m, theta_scale),
                     "no_step": float(problem.excess_loss(fresh).mean())})
    return rows
