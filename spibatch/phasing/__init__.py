"""Phase retrieval: measured amplitudes -> real-space density.

Modules: :mod:`.measurement` (intensity -> amplitudes in FFT order, the free
voxels, the first support), :mod:`.fft` (planned FFTs), :mod:`.reconstruction`
(one run's state), :mod:`.operators` (ER, HIO, RAAR, DM, ShrinkWrap and their
algebra), :mod:`.multistart` (many seeded runs, alignment, averaging, PRTF) and
:mod:`.stage` (the ``spibatch phase`` files and pictures).
"""

# the default recipe and first-support threshold (the config and multistart.Options share them)
DEFAULT_RECIPE = "(HIO(beta=0.9) ** 50 * ShrinkWrap(sigma=2, threshold=0.1)) ** 10 * ER() ** 100"
DEFAULT_SUPPORT_THRESHOLD = 0.04
