"""regularisation_parameter.follow_discrepancy: the lam-auto controller on a model of an iterative
chain whose residual lags behind a change of lam and is still falling as the chain converges (the
behaviour that made a root search over separate trials stall)."""
from __future__ import annotations

import math

import pytest

from recon_cli.solvers.regularisation_parameter import follow_discrepancy


class LaggingChain:
    """Converged residual r*(lam) = lam^slope; the chain relaxes toward it with time constant ``tau``
    iterations, and carries an extra, slowly vanishing excess of the unconverged iterate."""

    def __init__(self, slope=0.4, tau=40.0, excess=0.3, r0=5.0):
        self.slope, self.tau, self.excess = slope, tau, excess
        self.r, self.used = r0, 0

    def __call__(self, lam: float, n: int):
        target = lam ** self.slope
        self.r = target + (self.r - target) * math.exp(-n / self.tau)
        self.used += n
        return self.r + self.excess * math.exp(-self.used / 150.0), n


@pytest.mark.parametrize("lam0", [0.05, 1.0, 60.0])
@pytest.mark.parametrize("slope", [0.25, 0.4, 0.6])
def test_settles_on_the_lam_whose_converged_residual_meets_the_target(lam0, slope):
    chain = LaggingChain(slope=slope)
    target = 2.0
    lam_true = target ** (1.0 / slope)
    res = follow_discrepancy(chain, target, lam0, first=100, leg=50, budget=700, rtol=0.02)
    assert res.iterations <= 700 and res.legs == len(res.trace)
    # where the chain's excess has died away, the lam meets the converged target within a few rtol
    assert abs(res.lam ** slope / target - 1.0) < 0.06, (res.lam, lam_true, res.trace)


def test_stays_within_its_budget_when_the_target_is_out_of_reach():
    # a residual floor above the target (e.g. model error beyond the noise): lam falls, each step at
    # most a factor 2, and the run stops at the budget
    res = follow_discrepancy(lambda lam, n: (3.0 + 1e-3 * lam, n), 1.0, 10.0, first=100, leg=50, budget=350)
    assert not res.settled and res.iterations <= 350 and res.legs == 6
    lams = [t[0] for t in res.trace]
    assert all(b < a for a, b in zip(lams, lams[1:]))
    assert all(a / b <= 10.0 + 1e-9 for a, b in zip(lams[:1], lams[1:2]))
    assert all(a / b <= 2.0 + 1e-9 for a, b in zip(lams[1:], lams[2:]))


def test_refuses_a_target_that_is_not_positive():
    for target in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            follow_discrepancy(lambda lam, n: (1.0, n), target, 1.0, first=10, leg=5, budget=50)
