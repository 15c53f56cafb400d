"""``recon simulate``: write a simulated sinogram (layout v1, with /reference) from a phantom or an image."""
from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np

from recon_cli.errors import ConfigError, InputError

PHANTOMS = ("shepp-logan", "coule")


def _load_image(path: str, voxel_override: float | None) -> tuple[np.ndarray, float, str]:
    """(image in 1/mm, pixel size mm, description) from an HDF5 image or a DICOM CT slice (HU)."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", file=path)
    if h5py.is_hdf5(path):
        from recon_cli.io.hdf5 import read_image

        image, voxel = read_image(path)
        what = f"hdf5 image {p.name}"
    else:
        from recon_cli.io.dicom_image import read_ct_slice_mu

        image, voxel = read_ct_slice_mu(path)
        what = f"DICOM CT slice {p.name} (HU -> 1/mm)"
    if voxel_override is not None:
        voxel = voxel_override
    return image, float(voxel), f"{what}, pixel {voxel:g} mm"


def _positive(name: str, value) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"must be positive, got {value}", field=name)


#: Upper bounds of the simulation options (beyond them numpy or ASTRA fail with raw errors, or
#: memory runs out): upsampling factor, incident photons (Poisson sampling needs I0 e^-y < 2^63),
#: the random seed (numpy takes 0 <= seed < 2^63), the arc in radians.
MAX_UPSAMPLE = 16
MAX_I0 = 1.0e15
MAX_SEED = 2**63 - 1
#: Geometry / grid fields -> the simulate option that sets them (for messages).
_OPTION_OF = {"geometry/angles": "arc", "geometry/detector_spacing": "detector-spacing",
              "geometry/detector_count": "detector-count", "geometry/source_origin": "source-origin",
              "geometry/origin_detector": "origin-detector", "volume/voxel_size": "voxel-size",
              "volume/shape": "size"}


def _check_ranges(upsample: int, i0: float | None, seed: int, arc: float | None, size: int,
                  slices: int | None) -> None:
    """Refuse option values beyond what the simulation can do (ConfigError naming the option)."""
    from recon_cli.geometry import MAX_ABS_ANGLE
    from recon_cli.memory import available_host_memory, format_size

    if upsample > MAX_UPSAMPLE:
        raise ConfigError(f"must be at most {MAX_UPSAMPLE}, got {upsample}", field="upsample")
    if i0 is not None and i0 > MAX_I0:
        raise ConfigError(f"must be at most {MAX_I0:g} photons, got {i0:g}", field="I0")
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"must be between 0 and 2^63 - 1, got {seed}", field="seed")
    if arc is not None and arc > MAX_ABS_ANGLE:
        raise ConfigError(f"must be at most {MAX_ABS_ANGLE:g} rad, got {arc:g} (radians, not degrees)", field="arc")
    fine = float(size * upsample) ** 2 * (slices or 1) * 8 * 3  # the fine image and two float64 temporaries
    if fine > available_host_memory():
        raise ConfigError(f"--size {size} x --upsample {upsample} needs about {format_size(int(fine))} of memory, "
                          f"more than the {format_size(available_host_memory())} available", field="upsample")


@click.command("simulate")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--phantom", type=click.Choice(PHANTOMS), default=None,
              help="Phantom to simulate (default shepp-logan unless --image is given).")
@click.option("--image", "image_path", type=click.Path(dir_okay=False), default=None,
              help="Image to simulate instead: a DICOM CT slice (HU) or an HDF5 image in 1/mm.")
@click.option("--image-voxel-size", type=float, default=None,
              help="Pixel size of --image in mm, overriding the file's value.")
@click.option("--geometry", "geometry_type", type=click.Choice(["fanflat", "parallel"]), default="fanflat",
              show_default=True, help="Acquisition geometry.")
@click.option("--angles", "n_angles", type=int, default=60, show_default=True, help="Number of views.")
@click.option("--arc", type=float, default=None,
              help="Angular range in radians [default: 2*pi for fanflat, pi for parallel].")
@click.option("--detector-count", type=int, default=None,
              help="Detector elements [default: 512 for fanflat, SIZE for parallel].")
@click.option("--detector-spacing", type=float, default=None,
              help="Detector element size in mm [default: 1.2 for fanflat, VOXEL_SIZE for parallel].")
@click.option("--source-origin", type=float, default=595.0, show_default=True,
              help="Source to rotation axis distance in mm (fanflat).")
@click.option("--origin-detector", type=float, default=490.0, show_default=True,
              help="Rotation axis to detector distance in mm (fanflat).")
@click.option("--size", type=int, default=256, show_default=True, help="Grid size N (N x N pixels).")
@click.option("--voxel-size", type=float, default=1.0, show_default=True, help="Grid pixel size in mm.")
@click.option("--slices", type=int, default=None,
              help="Write a stack of this many slices (phantoms vary per slice; a 2D image is repeated).")
@click.option("--upsample", type=int, default=2, show_default=True,
              help="Image and detector refinement for the projection (avoids the inverse crime).")
@click.option("--I0", "i0", type=float, default=None,
              help="Poisson noise: incident photons per detector element (e.g. 1e5).")
@click.option("--gaussian", type=float, default=None,
              help="Gaussian noise with ||e|| = GAUSSIAN * ||y|| (e.g. 0.01).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (noise and COULE phantom).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def simulate(output, phantom, image_path, image_voxel_size, geometry_type, n_angles, arc, detector_count,
             detector_spacing, source_origin, origin_detector, size, voxel_size, slices, upsample, i0,
             gaussian, seed, overwrite):
    """Simulate a sinogram of a phantom or an image and write it to OUTPUT (HDF5 layout v1).

    The defaults are the reference case: fan beam, flat detector of 512 x 1.2 mm,
    source-origin 595 mm, origin-detector 490 mm, 60 views over 2*pi, 256 x 256 grid of
    1 mm. The true image on the grid is stored as /reference. Phantoms are drawn on the
    UPSAMPLE-times finer projection grid; an --image is interpolated linearly onto it, so its
    /reference is the area average of that interpolated image (slightly smoother than the file).
    """
    from recon_cli.geometry import VolumeGrid, fan_beam_geometry, parallel_beam_geometry
    from recon_cli.io.hdf5 import write_sinogram
    from recon_cli.phantoms import phantom_stack
    from recon_cli.simulate import simulate_sinogram

    if phantom and image_path:
        raise ConfigError("give either --phantom or --image, not both", field="phantom")
    for name, value in [("angles", n_angles), ("size", size), ("upsample", upsample), ("slices", slices),
                        ("detector-count", detector_count)]:
        if value is not None and value < 1:
            raise ConfigError(f"must be at least 1, got {value}", field=name)
    for name, value in [("voxel-size", voxel_size), ("arc", arc), ("detector-spacing", detector_spacing),
                        ("source-origin", source_origin), ("origin-detector", origin_detector), ("I0", i0),
                        ("image-voxel-size", image_voxel_size)]:
        _positive(name, value)
    if gaussian is not None and not (math.isfinite(gaussian) and gaussian >= 0):
        raise ConfigError(f"must be >= 0, got {gaussian}", field="gaussian")
    _check_ranges(upsample, i0, seed, arc, size, slices)
    if Path(output).exists() and not overwrite:
        raise InputError("exists; use --overwrite", file=output)

    try:
        if geometry_type == "fanflat":
            geometry = fan_beam_geometry(n_angles, detector_count or 512, detector_spacing or 1.2,
                                         source_origin, origin_detector, arc if arc is not None else 2 * math.pi)
        else:
            geometry = parallel_beam_geometry(n_angles, detector_count or size, detector_spacing or voxel_size,
                                              arc if arc is not None else math.pi)
        VolumeGrid((size, size), voxel_size)
    except InputError as exc:
        raise ConfigError(exc.message, field=_OPTION_OF.get(exc.field or "", exc.field)) from None

    if image_path:
        image, image_voxel, source = _load_image(image_path, image_voxel_size)
        if image.ndim == 3 and slices is not None and slices != image.shape[0]:
            raise ConfigError(f"--slices {slices} but the image has {image.shape[0]} slices", field="slices")
        if image.ndim == 2 and slices is not None:
            image = np.repeat(image[None], slices, axis=0)
        n_slices = image.shape[0] if image.ndim == 3 else None
    else:
        phantom = phantom or "shepp-logan"
        rng = np.random.default_rng([seed, 1])
        # drawn directly on the fine projection grid: no interpolation of the phantom
        image = phantom_stack(phantom, size * upsample, slices or 1, rng)
        image = image if slices is not None else image[0]
        image_voxel = voxel_size / upsample
        n_slices, source = slices, f"phantom {phantom}"

    grid = VolumeGrid((size, size) if n_slices is None else (n_slices, size, size), voxel_size)
    sino = simulate_sinogram(image, image_voxel, geometry, grid, upsample=upsample, I0=i0,
                             gaussian_rel=gaussian, seed=seed, simulated_from=source)
    write_sinogram(output, sino, overwrite=overwrite)
    noise = ", ".join(f"{k}={sino.metadata[k]:g}" for k in ("I0", "gaussian_rel") if k in sino.metadata)
    click.echo(f"wrote {output}: sinogram {list(sino.data.shape)} ({geometry.type}), grid {list(grid.shape)} "
               f"of {voxel_size:g} mm, {source}, noise {noise or 'none'} (sigma {sino.metadata['sigma']:.3g})")
