"""Phase retrieval: measured amplitudes -> real-space density.

Modules: :mod:`.measurement` (intensity -> amplitudes in FFT order, the free
voxels, the first support), :mod:`.fft` (planned FFTs), :mod:`.reconstruction`
(one run's state), :mod:`.operators` (ER, HIO, RAAR, DM, ShrinkWrap and their
algebra), :mod:`.multistart` (many seeded runs, alignment, averaging, PRTF) and
:mod:`.stage` (the ``spibatch phase`` files and pictures).
"""
