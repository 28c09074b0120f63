"""Kernels: the loops array expressions cannot do well.

``emc_cpu.py`` and ``phasing_cpu.py``: Numba on the CPU.  ``cuda/*.cu``: their CUDA twins, launched
through CuPy or PyCUDA (``cuda_launch.py``, ``emc_gpu.py``, ``phasing_gpu.py``); ``xp.py`` picks numpy or
cupy and the process's GPU; ``cuda_twin.py`` runs the CUDA kernels' semantics in numpy for tests.

Numba's OpenMP workers spin for a while after each parallel kernel by default; in
phasing they then steal the cores FFTW's own threads need between two kernels
(measured: one HIO iteration at 128^3 on 2 cores took 36.7 ms spinning, 15.8 ms
passive).  EMC's kernels run for milliseconds to seconds each, so waiting
passively costs them nothing.  Set before Numba loads its OpenMP runtime; a user's
own OMP_WAIT_POLICY wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
