"""Physical and reference constants shared by every layer (no imports: the bottom of the package).

``MU_WATER``: linear attenuation of water at about 70 keV, in 1/mm; HU = 1000 (mu - MU_WATER) / MU_WATER.

The reference geometry (recon_cli.geometry.reference_geometry): the project's reference case, a
flat-detector fan beam with 60 equally spaced views over 2*pi on a 256 x 256 grid of 1 mm pixels.
Distances in mm.
"""
from __future__ import annotations

#: Water attenuation, 1/mm (~70 keV).
MU_WATER = 0.0192

#: Views of the reference fan beam (over 2*pi).
REFERENCE_N_ANGLES = 60
#: Detector elements of the reference fan beam.
REFERENCE_DETECTOR_COUNT = 512
#: Detector pitch of the reference fan beam, mm.
REFERENCE_DETECTOR_SPACING = 1.2
#: Source to rotation axis, mm.
REFERENCE_SOURCE_ORIGIN = 595.0
#: Rotation axis to detector, mm.
REFERENCE_ORIGIN_DETECTOR = 490.0
#: Reconstruction grid (ny, nx) of the reference case.
REFERENCE_GRID_SHAPE = (256, 256)
#: Pixel size of the reference grid, mm.
REFERENCE_VOXEL_SIZE = 1.0
