"""GPU twins of :mod:`spibatch.kernels.emc_cpu`: the same sums on CuPy arrays, launched from
``cuda/emc.cu`` through :class:`~spibatch.kernels.cuda_launch.Launcher` (CuPy or PyCUDA).

Differences from the CPU path, by design: the model and views are float32 on the device,
the likelihood of a shard is a dense (frames, rotation block) float32 array, and the
probabilities are normalised per frame in one block each (pruned as on the CPU).
"""

from __future__ import annotations

import numpy as np

from spibatch.kernels.cuda_launch import BLOCK, Launcher, check


def _check_photons(frame_ptr, frame_end, pixel, count, nframes: int) -> None:
    """The sparse photons of ``nframes`` frames, as every by-frame kernel takes them (CSR by frame)."""
    check("frame_ptr", frame_ptr, np.int64, (nframes + 1,))
    check("frame_end", frame_end, np.int64, (nframes,))
    check("pixel", pixel, np.int32)
    check("count", count, np.float32, pixel.shape)


class EMCKernels:
    """Kernels on one device; ``xp`` is cupy (numpy only for argument tests with a recording runtime)."""

    def __init__(self, runtime="cupy", xp=None):
        if xp is None:
            import cupy as xp
        self.xp = xp
        self.launch = Launcher("emc.cu", runtime)

    @staticmethod
    def _grid(nrot: int, rows: int) -> tuple[int, int]:
        return ((nrot + BLOCK - 1) // BLOCK, rows)

    def log_views(self, model, rotmats, mode, q, pixel_factor, tiny: float, out, view_sum) -> None:
        """out (T, R) float32 <- log of the trilinear views of model (V, M, M, M) float32 (volume mode[r] (R,)
        int32 for rotation r) times pixel_factor (T,) float32; view_sum (R,) float64 += the views' sums."""
        m = model.shape[-1]
        check("model", model, np.float32, model.shape[:-3] + (m, m, m))
        nrot, npix = rotmats.shape[0], q.shape[0]
        check("rotmats", rotmats, np.float32, (nrot, 3, 3))
        check("mode", mode, np.int32, (nrot,))
        check("q", q, np.float32, (npix, 3))
        check("pixel_factor", pixel_factor, np.float32, (npix,))
        check("out", out, np.float32, (npix, nrot))
        check("view_sum", view_sum, np.float64, (nrot,))
        self.launch("log_views", self._grid(nrot, npix),
                    (model, np.int32(m), rotmats, mode, np.int32(nrot), q, pixel_factor, np.int32(npix),
                     np.float32(tiny), out, view_sum))

    def views(self, model, rotmats, mode, q, pixel_factor, out, view_sum) -> None:
        """As :meth:`log_views`, the views themselves (a background's likelihood and merge read them)."""
        m = model.shape[-1]
        check("model", model, np.float32, model.shape[:-3] + (m, m, m))
        nrot, npix = rotmats.shape[0], q.shape[0]
        check("rotmats", rotmats, np.float32, (nrot, 3, 3))
        check("mode", mode, np.int32, (nrot,))
        check("q", q, np.float32, (npix, 3))
        check("pixel_factor", pixel_factor, np.float32, (npix,))
        check("out", out, np.float32, (npix, nrot))
        check("view_sum", view_sum, np.float64, (nrot,))
        self.launch("views", self._grid(nrot, npix),
                    (model, np.int32(m), rotmats, mode, np.int32(nrot), q, pixel_factor, np.int32(npix), out,
                     view_sum))

    def photon_log_likelihood(self, log_views, frame_ptr, frame_end, pixel, count, log_prior, scale, view_sum,
                              out) -> None:
        npix, nrot = log_views.shape
        nframes = frame_end.shape[0]
        check("log_views", log_views, np.float32)
        _check_photons(frame_ptr, frame_end, pixel, count, nframes)
        check("log_prior", log_prior, np.float64, (nrot,))
        check("scale", scale, np.float64, (nframes,))
        check("view_sum", view_sum, np.float64, (nrot,))
        check("out", out, np.float32, (nframes, nrot))
        self.launch("photon_log_likelihood", self._grid(nrot, nframes),
                    (log_views, np.int32(nrot), frame_ptr, frame_end, pixel, count, log_prior, scale, view_sum,
                     np.int32(nframes), out))

    def normalize_probabilities(self, like, beta, window: float, prob_min: float, prob, best, norm) -> None:
        nframes, nrot = like.shape
        check("like", like, np.float32)
        check("beta", beta, np.float64, (nframes,))
        check("prob", prob, np.float32, like.shape)
        check("best", best, np.float64, (nframes,))
        check("norm", norm, np.float64, (nframes,))
        self.launch("normalize_probabilities", (nframes,),
                    (like, np.int32(nrot), beta, np.float64(window), np.float64(prob_min), prob, best, norm))

    def weighted_photons(self, prob, pixel_ptr, frame, count, out) -> None:
        nframes, nrot = prob.shape
        npix = pixel_ptr.shape[0] - 1
        check("prob", prob, np.float32)
        check("pixel_ptr", pixel_ptr, np.int64)
        check("frame", frame, np.int32)
        check("count", count, np.float32, frame.shape)
        check("out", out, np.float32, (npix, nrot))
        self.launch("weighted_photons", self._grid(nrot, npix),
                    (prob, np.int32(nrot), pixel_ptr, frame, count, np.int32(npix), out))

    def merge_views(self, acc, rotmats, mode, q, views, weight_of_rot) -> None:
        """acc (V, M, M, M, 2) float32 += the splats of views (T, R) into volume mode[r] (R,) int32."""
        m = acc.shape[-2]
        check("acc", acc, np.float32, acc.shape[:-4] + (m, m, m, 2))
        nrot, npix = rotmats.shape[0], q.shape[0]
        check("rotmats", rotmats, np.float32, (nrot, 3, 3))
        check("mode", mode, np.int32, (nrot,))
        check("q", q, np.float32, (npix, 3))
        check("views", views, np.float32, (npix, nrot))
        check("weight_of_rot", weight_of_rot, np.float32, (nrot,))
        self.launch("merge_views", self._grid(nrot, npix),
                    (acc, np.int32(m), rotmats, mode, np.int32(nrot), q, np.int32(npix), views, weight_of_rot))

    # ---------------------------------------------------------------- with a known background
    # scale, background_scale (D,) float64 of the chunk's frames; background (T,) float32 of the pixel rows

    def photon_log_likelihood_bg(self, views, frame_ptr, frame_end, pixel, count, log_prior, scale,
                                 background_scale, background, view_sum, tiny: float, out) -> None:
        """out (D, R) float32 <- log_prior - scale x view_sum + sum of count x log(max(s V + b B, tiny)) over each
        frame's used photons; views (T_used, R) float32 (not their logs)."""
        npix, nrot = views.shape
        nframes = frame_end.shape[0]
        check("views", views, np.float32)
        _check_photons(frame_ptr, frame_end, pixel, count, nframes)
        check("log_prior", log_prior, np.float64, (nrot,))
        check("scale", scale, np.float64, (nframes,))
        check("background_scale", background_scale, np.float64, (nframes,))
        check("background", background, np.float32, (npix,))
        check("view_sum", view_sum, np.float64, (nrot,))
        check("out", out, np.float32, (nframes, nrot))
        self.launch("photon_log_likelihood_bg", self._grid(nrot, nframes),
                    (views, np.int32(nrot), frame_ptr, frame_end, pixel, count, log_prior, scale, background_scale,
                     background, view_sum, np.int32(nframes), np.float32(tiny), out))

    def weighted_photons_bg(self, prob, pixel_ptr, frame, count, views, scale, background_scale, background,
                            tiny: float, out) -> None:
        """out (T, R) float32 <- the photons by pixel weighted by prob and their expected particle share
        s V / (s V + b B); views (T, R) float32 of the same pixel rows, background (T,) float32 of them."""
        nframes, nrot = prob.shape
        npix = pixel_ptr.shape[0] - 1
        check("prob", prob, np.float32)
        check("pixel_ptr", pixel_ptr, np.int64)
        check("frame", frame, np.int32)
        check("count", count, np.float32, frame.shape)
        check("views", views, np.float32, (npix, nrot))
        check("scale", scale, np.float64, (nframes,))
        check("background_scale", background_scale, np.float64, (nframes,))
        check("background", background, np.float32, (npix,))
        check("out", out, np.float32, (npix, nrot))
        self.launch("weighted_photons_bg", self._grid(nrot, npix),
                    (prob, np.int32(nrot), pixel_ptr, frame, count, views, scale, background_scale, background,
                     np.int32(npix), np.float32(tiny), out))

    def particle_photons(self, prob, frame_ptr, frame_end, pixel, count, views, scale, background_scale, background,
                         tiny: float, out) -> None:
        """out (D,) float64 += sum_r prob x the particle share of each frame's used photons; views (T_used, R)."""
        nframes, nrot = prob.shape
        check("prob", prob, np.float32)
        _check_photons(frame_ptr, frame_end, pixel, count, nframes)
        check("views", views, np.float32)
        check("scale", scale, np.float64, (nframes,))
        check("background_scale", background_scale, np.float64, (nframes,))
        check("background", background, np.float32, (views.shape[0],))
        check("out", out, np.float64, (nframes,))
        self.launch("particle_photons", self._grid(nrot, nframes),
                    (prob, np.int32(nrot), frame_ptr, frame_end, pixel, count, views, scale, background_scale,
                     background, np.int32(nframes), np.float32(tiny), out))
