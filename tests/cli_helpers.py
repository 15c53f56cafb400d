"""The CLI called in-process, as the tests of several commands need it."""
from __future__ import annotations

import pytest


def recon_quiet(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``recon -q ARGS`` run in this process."""
    from recon_cli.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-q", *args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def inverse_crime_case(n: int, views: int, seed: int = 0, noise_rel: float = 0.01):
    """(K, sinogram, ||e||): a pixel-sharp Shepp-Logan (n^2 pixels over 256 mm) projected by K itself on a
    ``views``-view fan beam, plus white noise of ``noise_rel`` ||K x||; metadata sigma and upsample 1."""
    import math

    import numpy as np

    from recon_cli.geometry import VolumeGrid, fan_beam_geometry
    from recon_cli.phantoms import shepp_logan
    from recon_cli.projectors.astra_matrix import AstraMatrixProjector
    from recon_cli.sinogram import Sinogram

    geometry = fan_beam_geometry(views, detector_count=2 * n, detector_spacing=1.2 * 256 / n)
    grid = VolumeGrid((n, n), 256.0 / n)
    K = AstraMatrixProjector(geometry, grid)
    x = shepp_logan(n, supersample=1)
    y = K.forward(x)
    e = np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
    e *= noise_rel * np.linalg.norm(y) / np.linalg.norm(e)
    sino = Sinogram(data=(y + e).astype(np.float32), geometry=geometry, grid=grid, reference=x,
                    metadata={"sigma": float(np.linalg.norm(e) / math.sqrt(y.size)), "upsample": 1})
    return K, sino, float(np.linalg.norm(e))
