"""Hounsfield units <-> linear attenuation (1/mm): HU = 1000 (mu - mu_water) / mu_water.

Arrays of any shape, float32 on the way out; ``mu_water`` in 1/mm (default recon_cli.constants.MU_WATER).
"""
from __future__ import annotations

import numpy as np

from recon_cli.constants import MU_WATER


def hu_to_mu(hu, mu_water: float = MU_WATER):
    """Linear attenuation (1/mm) from Hounsfield units; exact inverse of :func:`mu_to_hu`."""
    return mu_water * (1.0 + np.asarray(hu, np.float32) / 1000.0)


def mu_to_hu(mu, mu_water: float = MU_WATER):
    """Hounsfield units from linear attenuation (1/mm)."""
    return 1000.0 * (np.asarray(mu, np.float32) - mu_water) / mu_water
