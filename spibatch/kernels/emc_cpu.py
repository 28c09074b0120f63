"""CPU kernels of the EMC step (Numba, parallel).

These are the loops that array expressions cannot do well: trilinear slicing
of the model on rotated pixel q-vectors, the sparse photons x log-view
products of the Poisson log-likelihood, the probability-weighted sums of
photons per rotation, and the trilinear merge of those views back into 3-D.

Conventions: the model is an (M, M, M) float64 volume indexed [qx, qy, qz]
with q = 0 at index c = (M - 1) / 2; a pixel's model coordinate under the
rotation matrix ``R`` is ``R @ q``.  Views are stored pixel-major
(pixels x rotations), so the per-photon work is one contiguous row.
Numba compiles on first use and caches to disk (``cache=True``).
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(inline="always")
def _corner(m, c, a, qt0, qt1, qt2):
    x = a[0, 0] * qt0 + a[0, 1] * qt1 + a[0, 2] * qt2 + c
    y = a[1, 0] * qt0 + a[1, 1] * qt1 + a[1, 2] * qt2 + c
    z = a[2, 0] * qt0 + a[2, 1] * qt1 + a[2, 2] * qt2 + c
    ix, iy, iz = int(np.floor(x)), int(np.floor(y)), int(np.floor(z))
    inside = not (ix < 0 or iy < 0 or iz < 0 or ix >= m - 1 or iy >= m - 1 or iz >= m - 1)
    return inside, ix, iy, iz, x - ix, y - iy, z - iz


@nb.njit(parallel=True, cache=True)
def log_views_t(model, rotmats, q, tiny, out_t, u_parts):
    """Log of the trilinear views, pixel-major, and the views' sums.

    model (M, M, M) float64; rotmats (R, 3, 3); q (T, 3) in voxels.
    out_t (T, R) float64 <- log(max(model(R_r q_t), tiny)); u_parts (S, R)
    float64 <- partial sums over pixels of the views (sum over S = u_r).
    Points outside the grid read 0.
    """
    m = model.shape[0]
    c = (m - 1) / 2.0
    npix, nrot = out_t.shape
    slots = u_parts.shape[0]
    chunk = (npix + slots - 1) // slots
    for s in nb.prange(slots):
        for r in range(nrot):
            u_parts[s, r] = 0.0
        for t in range(s * chunk, min(npix, (s + 1) * chunk)):
            for r in range(nrot):
                inside, ix, iy, iz, fx, fy, fz = _corner(m, c, rotmats[r], q[t, 0], q[t, 1], q[t, 2])
                v = 0.0
                if inside:
                    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
                    v = (gx * (gy * (gz * model[ix, iy, iz] + fz * model[ix, iy, iz + 1])
                               + fy * (gz * model[ix, iy + 1, iz] + fz * model[ix, iy + 1, iz + 1]))
                         + fx * (gy * (gz * model[ix + 1, iy, iz] + fz * model[ix + 1, iy, iz + 1])
                                 + fy * (gz * model[ix + 1, iy + 1, iz] + fz * model[ix + 1, iy + 1, iz + 1])))
                u_parts[s, r] += v
                out_t[t, r] = np.log(np.float32(max(v, tiny)))   # logf: the views only need float32


@nb.njit(parallel=True, cache=True)
def photon_log_likelihood(log_views_t, frame_ptr, frame_end, pixel, count, log_prior, scale, view_sum, out):
    """out[d, r] = log_prior[r] - scale[d] view_sum[r] + sum over frame d's photons of count * log_views_t[pixel, r].

    log_views_t (T, R) float64; frame d's photons are entries frame_ptr[d] .. frame_end[d]
    (int64 (D + 1,) and (D,)) of pixel (n,) int32, count (n,) float32 (exact integers); log_prior (R,),
    scale (D,), view_sum (R,) float64; out (D, R), overwritten.
    """
    nrot = log_views_t.shape[1]
    for d in nb.prange(out.shape[0]):
        row = out[d]
        s = scale[d]
        for k in range(nrot):
            row[k] = log_prior[k] - s * view_sum[k]
        for j in range(frame_ptr[d], frame_end[d]):
            src = log_views_t[pixel[j]]
            cnt = np.float64(count[j])   # counts are stored as float32 (exact small integers)
            for k in range(nrot):
                row[k] += cnt * src[k]


@nb.njit(parallel=True, cache=True)
def weighted_photons_dense(prob, pixel_ptr, frame, count, out_t):
    """out_t[t, r] = sum over frames d with photons in pixel t of count * prob[d, r].

    prob (D, R) float64 dense block of probabilities; pixel_ptr (T + 1,) int64,
    frame (n,) int32, count (n,) float32: photons in CSC form (by pixel);
    out_t (T, R), overwritten.
    """
    nrot = prob.shape[1]
    for t in nb.prange(out_t.shape[0]):
        row = out_t[t]
        for k in range(nrot):
            row[k] = 0.0
        for j in range(pixel_ptr[t], pixel_ptr[t + 1]):
            src = prob[frame[j]]
            cnt = np.float64(count[j])   # counts are stored as float32 (exact small integers)
            for k in range(nrot):
                row[k] += cnt * src[k]


@nb.njit(parallel=True, cache=True)
def weighted_photons_sparse(rot_ptr, frame_of, prob, frame_ptr, pixel, count, out_t):
    """Same sums as weighted_photons_dense from sparse probabilities grouped by rotation.

    rot_ptr (R + 1,) int64 into frame_of (n,) int64 / prob (n,) float64;
    frame_ptr, pixel, count: photons in CSR form (by frame); out_t (T, R), overwritten.
    """
    npix, nrot = out_t.shape
    for r in nb.prange(nrot):
        for t in range(npix):
            out_t[t, r] = 0.0
        for k in range(rot_ptr[r], rot_ptr[r + 1]):
            d = frame_of[k]
            p = prob[k]
            for j in range(frame_ptr[d], frame_ptr[d + 1]):
                out_t[pixel[j], r] += p * np.float64(count[j])


@nb.njit(parallel=True, cache=True)
def merge_views(acc, rotmats, q, views_t, weight_of_rot, parts):
    """Trilinear merge of views into 3-D: acc[..., 0] += splat(view_r), acc[..., 1] += splat(w_r).

    acc (M, M, M, 2) float32, numerator and denominator side by side so one
    cache line serves both; rotmats (R, 3, 3); q (T, 3); views_t (T, R);
    weight_of_rot (R,): rotations with weight 0 are skipped.  The x-range is
    split among ``parts`` threads: every thread walks all pixels of all rotations but writes only the voxels
    of its own slab of x, so no two threads touch the same memory and no
    per-thread copies of the volume are needed.
    """
    m = acc.shape[0]
    c = (m - 1) / 2.0
    npix, nrot = views_t.shape
    for p in nb.prange(parts):
        lo = (m * p) // parts
        hi = (m * (p + 1)) // parts
        for r in range(nrot):
            w_r = weight_of_rot[r]
            if w_r <= 0.0:
                continue
            a = rotmats[r]
            for t in range(npix):
                x = a[0, 0] * q[t, 0] + a[0, 1] * q[t, 1] + a[0, 2] * q[t, 2] + c
                ix = int(np.floor(x))
                if ix + 1 < lo or ix >= hi:
                    continue
                inside, ix, iy, iz, fx, fy, fz = _corner(m, c, a, q[t, 0], q[t, 1], q[t, 2])
                if not inside:
                    continue
                v = views_t[t, r]
                for dx in range(2):
                    if ix + dx < lo or ix + dx >= hi:
                        continue
                    wx = fx if dx else 1.0 - fx
                    for dy in range(2):
                        wxy = wx * (fy if dy else 1.0 - fy)
                        w0 = wxy * (1.0 - fz)
                        w1 = wxy * fz
                        cell = acc[ix + dx, iy + dy]
                        cell[iz, 0] += w0 * v
                        cell[iz, 1] += w0 * w_r
                        cell[iz + 1, 0] += w1 * v
                        cell[iz + 1, 1] += w1 * w_r


@nb.njit(cache=True)
def normalize_probabilities(frame, rot, value, best, beta, window, prob_min, view_sum, log_prior, scale,
                            norm, scale_den, log_like, info, kept, weight_of_rot):
    """Turn kept (frame, rotation, log-likelihood) entries into pruned probabilities, in place.

    P = exp(beta_d (L - best_d)) over entries with L > best_d - window_d,
    normalised per frame; entries with P < prob_min are then dropped.
    Returns n: the first n entries of ``frame``, ``rot`` and ``value`` now
    hold the kept entries, ``value`` holding P.  Per frame (zeroed here):
    norm, scale_den (sum P u_r), log_like (sum P L), info (sum P log(P/w_r)),
    kept (count); per rotation: weight_of_rot (sum P scale_d).
    """
    norm[:] = 0.0
    scale_den[:] = 0.0
    log_like[:] = 0.0
    info[:] = 0.0
    kept[:] = 0
    weight_of_rot[:] = 0.0
    n = len(frame)
    for i in range(n):
        d = frame[i]
        diff = value[i] - best[d]
        if diff > -window[d]:
            norm[d] += np.exp(beta[d] * diff)
    out = 0
    for i in range(n):
        d = frame[i]
        diff = value[i] - best[d]
        if diff <= -window[d]:
            continue
        p = np.exp(beta[d] * diff) / norm[d]
        if p < prob_min:
            continue
        r = rot[i]
        scale_den[d] += p * view_sum[r]
        log_like[d] += p * value[i]
        info[d] += p * (np.log(p) - log_prior[r])
        kept[d] += 1
        weight_of_rot[r] += p * scale[d]
        frame[out] = d
        rot[out] = r
        value[out] = p
        out += 1
    return out


@nb.njit(parallel=True, cache=True)
def rotation_average(model, rotmats, out):
    """out[x] = mean over rotations R of model(R x) (trilinear, about the centre), for point-group symmetry.

    model, out (M, M, M) float64; rotmats (G, 3, 3).  Points outside the grid read 0.
    """
    m = model.shape[0]
    c = (m - 1) / 2.0
    for i in nb.prange(m):
        for j in range(m):
            for k in range(m):
                acc = 0.0
                for g in range(rotmats.shape[0]):
                    inside, ix, iy, iz, fx, fy, fz = _corner(m, c, rotmats[g], i - c, j - c, k - c)
                    if inside:
                        gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
                        acc += (gx * (gy * (gz * model[ix, iy, iz] + fz * model[ix, iy, iz + 1])
                                      + fy * (gz * model[ix, iy + 1, iz] + fz * model[ix, iy + 1, iz + 1]))
                                + fx * (gy * (gz * model[ix + 1, iy, iz] + fz * model[ix + 1, iy, iz + 1])
                                        + fy * (gz * model[ix + 1, iy + 1, iz] + fz * model[ix + 1, iy + 1, iz + 1])))
                out[i, j, k] = acc / rotmats.shape[0]
