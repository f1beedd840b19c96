"""Section 3.3: M >= D distilled points reach the optimum from any θ0 in one step; M < D cannot."""
import torch

from datadistill.linear_regression import distill_linear, lower_bound, make_problem


def test_m_at_least_d_reaches_the_optimum_from_arbitrary_init():
    problem = make_problem(dim=4, seed=0)
    far = 10.0 * torch.randn(256, 4, generator=torch.Generator().manual_seed(5),
                             dtype=torch.float64)  # much farther than the training θ0
    for m in (4, 6):
        result = distill_linear(problem, m, iterations=1500)
        assert result.excess(problem, far).max() < 1e-8
        assert problem.excess_loss(far).mean() > 100  # without the step: far from optimal


def test_fewer_points_than_dimensions_stay_bounded_away_from_zero():
    problem = make_problem(dim=4, seed=0)
    fresh = torch.randn(4096, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for m in (1, 3):
        bound = lower_bound(problem, m, theta_scale=1.0)
        assert bound > 0.05
        excess = distill_linear(problem, m, iterations=1500).excess(problem, fresh).mean()
        assert excess >= 0.9 * bound  # the bound holds (up to sampling of θ0)
        assert excess <= 1.5 * bound  # and the optimizer gets close to it
