"""The information-dropping methods, listed once (no numba: the config reads it too).

Each method's name and the ``occlusion`` config values its kernel bakes in (the compile
cache keys on exactly these); the kernels are in :mod:`.dropping`.
"""

DROPPING_METHODS = {
    "none": (),
    "aid": ("num", "radius", "shift_prob", "shift_spread"),
    "cutout": ("num", "radius"),
    "erasing": ("erasing_area", "erasing_aspect"),
    "hide_and_seek": ("grid_sizes", "hide_prob"),
    "gridmask": ("gridmask_ratio", "gridmask_period"),
}
