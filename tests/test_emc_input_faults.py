"""EMC on inputs a Dragonfly user may bring (an audit, 2026-12-06): a model grid whose memory the estimate put at a
third of what it takes, photons only on excluded pixels, excluded pixels' corr, Dragonfly 1's text detector."""

from __future__ import annotations

import numpy as np
import pytest

from spibatch import estimates
from spibatch.errors import InputError


def test_the_emc_memory_estimate_covers_the_measured_peak():
    """Measured (the audit, the review): a 357^3 model peaked at 2.22 GiB (the estimate said 0.78), a 451^3 one at
    4.05 GB, two MPI ranks at 301^3 at 3.75 GB together; a 1069^3 model (18.3 GiB by the old estimate) passed on a
    23.5 GiB machine and was killed in its first iteration.  The estimate, a lower bound, stays within 20 % below."""
    for args, ranks, peak in (((357, 3240, 1000, 4096, 2984, 2), 1, 2.22 * 2 ** 30),
                              ((451, 3240, 1000, 4096, 2984, 2), 1, 4.05e9),
                              ((301, 3240, 1000, 500, 2984, 2), 2, 3.75e9)):
        assert 0.8 * peak < estimates.emc(*args, ranks=ranks).bytes <= peak
    machine = estimates.Budget(int(23.5 * 2 ** 30), "test", 2)
    with pytest.raises(InputError, match="emc stage needs at least"):
        estimates.emc(1069, 3240, 1000, 4096, 2984, 2).check("p.yaml", machine)


def test_photons_only_on_excluded_pixels_are_refused(emc_small, tmp_path):
    """Every photon on a mask-2 pixel: an all-zero model, exit 0 (the empty-frames check ignored the mask)."""
    from spibatch.detector import Detector
    from spibatch.io.dragonfly import check_photons, write_photons
    from spibatch.photons import Photons

    detector = Detector.read(emc_small["detector"])
    excluded = np.flatnonzero(detector.mask == 2)
    dense = np.zeros((20, detector.num_pix), np.int64)
    dense[:, excluded[:5]] = 3
    write_photons(tmp_path / "p.h5", Photons.from_dense(dense))
    check_photons(tmp_path / "p.h5")                                     # photons there: the file alone is fine
    with pytest.raises(InputError, match="none of its 20 frames has a photon on a pixel EMC uses"):
        check_photons(tmp_path / "p.h5", used=detector.mask == 0)


def test_excluded_pixels_corr_changes_nothing(emc_small):
    """corr -1 on the excluded pixels switched the correction off silently (the mean over all pixels went
    negative); 1e300 made the run "diverge"; 0 moved the model's scale by 2.7 %."""
    from spibatch.detector import Detector
    from spibatch.emc.types import PixelSet

    detector = Detector.read(emc_small["detector"])
    reference = PixelSet.from_detector(detector).corr
    for value in (-1.0, 0.0, 1e300):
        detector.corr[detector.mask == 2] = value
        np.testing.assert_array_equal(PixelSet.from_detector(detector).corr, reference)


def test_dragonfly_1s_text_detector_is_named(small_dataset, tmp_path):
    import h5py

    from spibatch.detector import Detector

    with h5py.File(small_dataset / "det_sim.h5") as f, open(tmp_path / "det.dat", "w") as out:
        out.write(f"{len(f['mask'])} {float(f['detd'][()])} {float(f['ewald_rad'][()])}\n")
        for row in zip(f["qx"][...], f["qy"][...], f["qz"][...], f["corr"][...], f["mask"][...]):
            out.write("%21.15e %21.15e %21.15e %21.15e %d\n" % row)
    with pytest.raises(InputError, match="a text detector \\(Dragonfly 1's format: 4,096 pixels"):
        Detector.read(tmp_path / "det.dat")
