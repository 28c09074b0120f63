"""spibatch: X-ray single-particle imaging from diffraction patterns to a 3-D density.

``import spibatch`` stays fast: heavy libraries (h5py, scipy, parsl, cupy)
are imported inside the functions that need them.
"""

__version__ = "0.1.0"
