"""Phase retrieval: measured amplitudes -> real-space density.

Modules: :mod:`.measurement` (intensity -> amplitudes in FFT order, the free voxels, the first
support), :mod:`.inputs` (an intensity file -> a measurement), :mod:`.settings` (how phasing runs, as
plain values), :mod:`.fft` (planned CPU FFTs), :mod:`.reconstruction` (the state of B starts, on the
CPU or a GPU), :mod:`.gpu` (the GPU's kernels, FFTs and batch sizes), :mod:`.algebra` and
:mod:`.operators` (ER, HIO, RAAR, DM, ShrinkWrap, their algebra and the recipe parser),
:mod:`.starts` (``run_starts``: independent seeded starts), :mod:`.multistart` (alignment, averaging,
PRTF), :mod:`.alignment`, :mod:`.compare` (against a true density), :mod:`.driver` (``run_phasing``:
one run into a folder), :mod:`.outputs` (its files and picture), :mod:`.auto` (``recipe: auto``: free
set, support schedules, ranking by free error), :mod:`.support` (the shrink-wrap) and :mod:`.export`
(CXI, the density in a truth's frame).
"""

# the default recipe and first-support threshold (the config and PhasingSettings share them).  "auto"
# (:mod:`.auto`) tunes itself on the data; the recipe before it, still a valid hand-written one:
# "(HIO(beta=0.9) ** 50 * ShrinkWrap(sigma=2, threshold=0.1)) ** 10 * ER() ** 100"
DEFAULT_RECIPE = "auto"
DEFAULT_SUPPORT_THRESHOLD = 0.04
