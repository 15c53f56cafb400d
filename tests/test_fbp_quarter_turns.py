"""FBP's backprojection shares one geometry evaluation between views a quarter turn apart: the result
equals the view-by-view backprojection."""
from __future__ import annotations

import numpy as np
import pytest

from recon_cli.geometry import VolumeGrid, fan_beam_geometry, parallel_beam_geometry
from recon_cli.solvers import fbp


def test_groups_of_equally_spaced_views():
    fan60 = fan_beam_geometry(60, 64, 1.0).angles
    groups = fbp.quarter_turn_groups(fan60, (32, 32))
    assert len(groups) == 15 and all(len(g) == 4 for g in groups)
    assert sorted(v for g in groups for v, _ in g) == list(range(60))
    for g in groups:
        base = fan60[g[0][0]]
        for v, k in g:
            assert np.isclose(np.mod(fan60[v] - base - k * np.pi / 2 + np.pi, 2 * np.pi) - np.pi, 0, atol=1e-9)
    assert all(len(g) == 1 for g in fbp.quarter_turn_groups(np.linspace(0, 2 * np.pi, 7, endpoint=False), (32, 32)))
    assert all(len(g) == 1 for g in fbp.quarter_turn_groups(fan60, (32, 30)))  # not square: no turns


@pytest.mark.parametrize("geometry", [fan_beam_geometry(60, 96, 1.1, 90.0, 60.0), parallel_beam_geometry(180, 72, 0.9),
                                      fan_beam_geometry(64, 96, 1.1, 90.0, 60.0)], ids=["fan60", "par180", "fan64"])
def test_grouped_backprojection_equals_view_by_view(geometry, monkeypatch):
    grid = VolumeGrid((2, 48, 48), 1.0)
    q = np.random.default_rng(0).standard_normal((2, geometry.n_angles, geometry.detector_count)).astype(np.float32)
    grouped = fbp.backproject(q, geometry, grid, 0.5)
    assert max(len(g) for g in fbp.quarter_turn_groups(geometry.angles, (48, 48))) >= 2
    monkeypatch.setattr(fbp, "quarter_turn_groups", lambda angles, shape: [[(v, 0)] for v in range(len(angles))])
    single = fbp.backproject(q, geometry, grid, 0.5)
    assert grouped.shape == single.shape == (2, 48, 48) and grouped.dtype == np.float32
    assert np.linalg.norm(grouped - single) < 1e-6 * np.linalg.norm(single)
