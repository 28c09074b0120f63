"""CPU kernels of the EMC step with a known background (Numba, parallel): the likelihood's and the merge's
photon loops when ``emc.background_file`` is given (:mod:`spibatch.kernels.emc_cpu` holds the others, which
serve both), and a vectorisable float32 log.

Expected photons of frame d at pixel t in rotation r: s_d V_rt + b_d B_t (V: the view, corr included; s: the
frame's scale, b: its background scale, B: the background per frame).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir as llvm_ir
from numba.extending import intrinsic

LN2_HI, LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)   # ln 2 in two parts (exact x exponent)
SQRT2 = np.float32(1.41421356)


@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float32 as an int32 (an LLVM bitcast: free, and vectorisable)."""
    if x != nb.types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.IntType(32))
    return nb.types.int32(x), codegen


@intrinsic
def _bits_float(typingctx, x):
    """The float32 whose bits are the low 32 of the integer ``x``."""
    if not isinstance(x, nb.types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if x.bitwidth > 32:
            value = builder.trunc(value, llvm_ir.IntType(32))
        return builder.bitcast(value, llvm_ir.FloatType())
    return nb.types.float32(x), codegen


@nb.njit(cache=True, fastmath=True, inline="always")
def log32(value):
    """log(value) of a float32 > 0 and normal, in float32 arithmetic: e ln 2 + log m from the number's bits
    (exponent e, mantissa m in [sqrt(1/2), sqrt(2))), log m by the classic Cephes minimax polynomial of degree 9
    in m - 1.  Error ~1e-7 relative (1 float32 ulp), as logf's; branch-free, so a loop over it vectorises, where
    Numba's np.log is a scalar call per number (~3x the time)."""
    i = _float_bits(value)
    e = np.float32((i >> 23) - 127)
    m = _bits_float((i & 0x007FFFFF) | 0x3F800000)        # the mantissa, as a number in [1, 2)
    if m > SQRT2:
        m = m * np.float32(0.5)
        e = e + np.float32(1.0)
    f = m - np.float32(1.0)
    z = f * f
    p = np.float32(7.0376836292e-2)
    p = p * f - np.float32(1.1514610310e-1)
    p = p * f + np.float32(1.1676998740e-1)
    p = p * f - np.float32(1.2420140846e-1)
    p = p * f + np.float32(1.4249322787e-1)
    p = p * f - np.float32(1.6668057665e-1)
    p = p * f + np.float32(2.0000714765e-1)
    p = p * f - np.float32(2.4999993993e-1)
    p = p * f + np.float32(3.3333331174e-1)
    return f + (f * z * p + e * LN2_LO - np.float32(0.5) * z) + e * LN2_HI


@nb.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def photon_log_likelihood_bg(views_t, frame_ptr, frame_end, pixel, count, scale, background_scale, background,
                             tiny, out):
    """out[d, r] = sum over frame d's photons of count * log(max(s_d V[pixel, r] + b_d B[pixel], tiny)).

    views_t (T, R) float32 (the views, not their logs, pixel-major); frame_ptr, frame_end, pixel, count as
    :func:`photon_log_likelihood`; scale, background_scale (D,) float64; background (T,) float32;
    out (D, R) float32, overwritten (summed in float32; the log by :func:`log32`).
    """
    nrot = views_t.shape[1]
    for d in nb.prange(out.shape[0]):
        row = out[d]
        for k in range(nrot):
            row[k] = 0.0
        s = np.float32(scale[d])
        b = np.float32(background_scale[d])
        for j in range(frame_ptr[d], frame_end[d]):
            t = pixel[j]
            src = views_t[t]
            bt = b * background[t]
            cnt = np.float32(count[j])
            for k in range(nrot):
                row[k] += cnt * log32(max(s * src[k] + bt, tiny))


@nb.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def weighted_photons_dense_bg(prob, pixel_ptr, frame, count, pixel_factor, views_t, scale, background_scale,
                              background, tiny, num_used, out_rt, particle):
    """out_rt[r, t] = pixel_factor[t] x sum over frames d with photons in pixel t of
    count * prob[d, r] * s_d V[t, r] / (s_d V[t, r] + b_d B[t]): the photons' expected particle share; and
    particle (threads, D) float64 += per frame the same summed over rotations and used pixels (t < num_used),
    one row per Numba thread (the caller adds the rows up).

    As :func:`weighted_photons_dense`, with views_t (T, R) float32 the views of all pixels (pixel-major),
    scale, background_scale (D,) float32 and background (T,) float32.
    """
    nrot, npix = out_rt.shape
    tile = 32
    for s_ in nb.prange((npix + tile - 1) // tile):
        buf = np.zeros((tile, nrot), np.float32)
        mine = particle[nb.get_thread_id()]
        t0 = s_ * tile
        t1 = min(npix, t0 + tile)
        for t in range(t0, t1):
            row = buf[t - t0]
            view = views_t[t]
            bt = background[t]
            for j in range(pixel_ptr[t], pixel_ptr[t + 1]):
                d = frame[j]
                src = prob[d]
                cnt = count[j]
                s = scale[d]
                b = background_scale[d] * bt
                part = np.float32(0.0)
                for k in range(nrot):
                    w = s * view[k]
                    share = src[k] * w / max(w + b, tiny)
                    row[k] += cnt * share
                    part += share
                if t < num_used:
                    mine[d] += np.float64(cnt) * part
        for k in range(nrot):
            for t in range(t0, t1):
                out_rt[k, t] = buf[t - t0, k] * pixel_factor[t]


@nb.njit(parallel=True, cache=True, nogil=True)
def weighted_photons_sparse_bg(rot_ptr, frame_of, prob, frame_ptr, frame_end, pixel, count, pixel_factor, views_rt,
                               scale, background_scale, background, tiny, out_rt, entry_particle):
    """:func:`weighted_photons_sparse` with each photon's expected particle share (as
    :func:`weighted_photons_dense_bg`), and entry_particle[k] (n,) float64 <- prob[k] x the share summed over
    the used photons of frame frame_of[k] (entries frame_ptr[d] .. frame_end[d]) in rotation r.

    views_rt (R, T) float32: the views of all pixels, rotation-major; scale, background_scale (D,) float64;
    background (T,) float32.
    """
    nrot, npix = out_rt.shape
    for r in nb.prange(nrot):
        row = out_rt[r]
        view = views_rt[r]
        for t in range(npix):
            row[t] = 0.0
        for k in range(rot_ptr[r], rot_ptr[r + 1]):
            d = frame_of[k]
            p = prob[k]
            s = scale[d]
            b = background_scale[d]
            used = 0.0
            for j in range(frame_ptr[d], frame_ptr[d + 1]):
                t = pixel[j]
                w = s * view[t]
                share = np.float64(count[j]) * w / max(w + b * background[t], tiny)
                row[t] += p * share
                if j < frame_end[d]:
                    used += share
            entry_particle[k] = p * used
        for t in range(npix):
            row[t] *= pixel_factor[t]
