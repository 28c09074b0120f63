"""Hit finding by lit pixels: a frame is a hit when more pixels hold >= 1 photon than a threshold.

The lit-pixel count is the facility's standard hit finder for SPI (EuXFEL's lit-frame finder
and the SPB hit finders count lit pixels).  The threshold is either a number (``threshold=N``:
hit when lit > N) or automatic (``threshold=None``), from the running distribution of the lit
pixels of the last ``window`` frames:

    threshold = max(min_lit, median + k * 1.4826 * MAD)

The rule and why: at SPI hit rates (well under 50%) most frames are empty, so the median and
the median absolute deviation (MAD, scaled by 1.4826 to a Gaussian sigma) describe the
background (scatter from gas, the beam and the injector; detector noise after calibration)
and are not moved by the hits, however bright; a hit is a frame ``k`` sigmas above it (k = 5
by default: about one background frame in 3.5 million under a Gaussian tail).  ``min_lit``
keeps a near-zero background (MAD 0: most frames with no lit pixel at all) from calling
every frame with one stray photon a hit.  When hits are the majority, the median is a hit
and the rule fails: give a number then.  Until ``window`` frames have been seen the
threshold is computed over the frames so far, the current block included (a train of an
EuXFEL MHz detector brings up to 352 frames at once, enough for a first estimate).
"""

from __future__ import annotations

import numpy as np

MAD_SIGMA = 1.4826


class HitFinder:
    """``hits(lit) -> bool mask`` with a fixed or a running threshold (see the module docstring).

    threshold : lit pixels above which a frame is a hit, or None for the automatic rule
    k_sigma, min_lit, window : the automatic rule's constants
    """

    def __init__(self, threshold: float | None = None, *, k_sigma: float = 5.0, min_lit: int = 20,
                 window: int = 10_000):
        if threshold is not None and not np.isfinite(threshold):
            raise ValueError(f"threshold must be a number or None, got {threshold}")
        self.fixed = threshold
        self.k_sigma, self.min_lit, self.window = float(k_sigma), int(min_lit), int(window)
        self._ring = np.zeros(self.window, np.int64)
        self._seen = 0
        self.threshold = float(threshold) if threshold is not None else float(min_lit)

    @property
    def rule(self) -> str:
        if self.fixed is not None:
            return f"lit pixels > {self.fixed:g}"
        return (f"lit pixels > max({self.min_lit}, median + {self.k_sigma:g} x 1.4826 MAD of the last "
                f"{self.window} frames)")

    def remember(self, lit: np.ndarray) -> None:
        """Add frames' lit-pixel counts to the running window (also used to restore it on resume)."""
        lit = np.asarray(lit, np.int64)[-self.window:]
        n = len(lit)
        if not n:
            return
        at = self._seen % self.window
        first = min(n, self.window - at)
        self._ring[at:at + first] = lit[:first]
        self._ring[:n - first] = lit[first:]
        self._seen += n

    def _recent(self) -> np.ndarray:
        return self._ring[:min(self._seen, self.window)]

    def hits(self, lit: np.ndarray) -> np.ndarray:
        """(n,) bool: which of these frames (lit-pixel counts ``lit``) are hits; updates the running window."""
        lit = np.asarray(lit, np.int64)
        self.remember(lit)
        if self.fixed is None:
            recent = self._recent()
            median = float(np.median(recent))
            mad = float(np.median(np.abs(recent - median)))
            self.threshold = max(float(self.min_lit), median + self.k_sigma * MAD_SIGMA * mad)
        return lit > self.threshold
