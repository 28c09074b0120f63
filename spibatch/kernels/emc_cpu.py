"""CPU kernels of the EMC step (Numba, parallel).

These are the loops that array expressions cannot do well: trilinear slicing
of the model on rotated pixel q-vectors, the sparse photons x log-view
products of the Poisson log-likelihood, the probability-weighted sums of
photons per rotation, and the trilinear merge of those views back into 3-D.

Conventions: the model is an (M, M, M) volume indexed [qx, qy, qz] with q = 0
at index c = (M - 1) / 2; a pixel's model coordinate under the rotation matrix
``R`` is ``R @ q``.  Views and weighted photons are rotation-major (rotations x
pixels) where a kernel walks one rotation's pixels (slicing, merging); the
log-views the likelihood reads are pixel-major (pixels x rotations), so the
per-photon work is one contiguous row.  Slicing and merging run in two passes
per rotation: the rotated positions, their cells and fractions for all pixels
(float32, vectorised), then the gathers or scatters -- 2x faster than one
scalar pass (measured).  Numba compiles on first use and caches to disk
(``cache=True``).  The kernels let go of the GIL (``nogil``): the run's files are written by a thread
of their own (:class:`~spibatch.emc.records.Recorder`) while the next iteration computes.
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


@nb.njit(inline="always")
def _cells(m, rot, r, q_t, cell, fx, fy, fz):
    """Rotation ``r``'s positions ``rot[r] @ q`` of all pixels (q_t (3, T) float32): ``cell`` (T,) int64 the
    flat index of the lower corner (-1 where the cell is not inside the grid), fx, fy, fz (T,) float32."""
    c = np.float32((m - 1) / 2.0)
    a00, a01, a02 = np.float32(rot[r, 0, 0]), np.float32(rot[r, 0, 1]), np.float32(rot[r, 0, 2])
    a10, a11, a12 = np.float32(rot[r, 1, 0]), np.float32(rot[r, 1, 1]), np.float32(rot[r, 1, 2])
    a20, a21, a22 = np.float32(rot[r, 2, 0]), np.float32(rot[r, 2, 1]), np.float32(rot[r, 2, 2])
    qx, qy, qz = q_t[0], q_t[1], q_t[2]
    for t in range(qx.shape[0]):
        x = a00 * qx[t] + a01 * qy[t] + a02 * qz[t] + c
        y = a10 * qx[t] + a11 * qy[t] + a12 * qz[t] + c
        z = a20 * qx[t] + a21 * qy[t] + a22 * qz[t] + c
        xf, yf, zf = np.floor(x), np.floor(y), np.floor(z)
        fx[t], fy[t], fz[t] = x - xf, y - yf, z - zf
        i, j, k = np.int64(xf), np.int64(yf), np.int64(zf)
        inside = (i >= 0) & (j >= 0) & (k >= 0) & (i < m - 1) & (j < m - 1) & (k < m - 1)
        cell[t] = (i * m + j) * m + k if inside else -1


@nb.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def views_by_rotation(model, m, rotmats, mode, q_t, pixel_factor, out, view_sum):
    """The trilinear views times a per-pixel factor, rotation-major, and their sums.

    model (V M^3,) float32 (the flat model: V volumes of M^3); rotmats (R, 3, 3); mode (R,) int32: the
    volume each rotation slices; q_t (3, T) float32 in voxels; pixel_factor (T,) float32 (the detector's
    corr, or ones); out (R, T) float32 <- c_t model_mode(R_r q_t) (points outside the grid read 0);
    view_sum (R,) float64 <- the sum of each row.
    """
    nrot, npix = out.shape
    mm = m * m
    one = np.float32(1.0)
    for r in nb.prange(nrot):
        volume = model[mode[r] * mm * m:(mode[r] + 1) * mm * m]
        cell = np.empty(npix, np.int64)
        fx, fy, fz = np.empty(npix, np.float32), np.empty(npix, np.float32), np.empty(npix, np.float32)
        _cells(m, rotmats, r, q_t, cell, fx, fy, fz)
        row = out[r]
        total = 0.0
        for t in range(npix):
            b = cell[t]
            v = np.float32(0.0)
            if b >= 0:                  # float32 weights, unsigned indices: as merge_views (1.27x)
                u = np.uint64(b)
                x, y, z = fx[t], fy[t], fz[t]
                gx, gy, gz = one - x, one - y, one - z
                v = (gx * (gy * (gz * volume[u] + z * volume[u + 1]) + y * (gz * volume[u + m] + z * volume[u + m + 1]))
                     + x * (gy * (gz * volume[u + mm] + z * volume[u + mm + 1])
                            + y * (gz * volume[u + mm + m] + z * volume[u + mm + m + 1]))) * pixel_factor[t]
            row[t] = v
            total += v
        view_sum[r] = total


@nb.njit(parallel=True, cache=True, nogil=True)
def photon_log_likelihood(log_views_t, frame_ptr, frame_end, pixel, count, out):
    """out[d, r] = sum over frame d's photons of count * log_views_t[pixel, r] (the likelihood's photon term).

    log_views_t (T, R) float32; frame d's photons are entries frame_ptr[d] .. frame_end[d] (int64 (D + 1,)
    and (D,)) of pixel (n,) int32, count (n,) float32 (exact integers); out (D, R) float32, overwritten.
    Summed in float32 (8 lanes of SIMD): ~1e-3 absolute on sums of ~1000 (measured on the small set), far
    below the 1 / beta that matters to the probabilities; :func:`keep_within_window` adds the float64 terms.
    """
    nrot = log_views_t.shape[1]
    for d in nb.prange(out.shape[0]):
        row = out[d]
        for k in range(nrot):
            row[k] = 0.0
        for j in range(frame_ptr[d], frame_end[d]):
            src = log_views_t[pixel[j]]
            cnt = count[j]
            for k in range(nrot):
                row[k] += cnt * src[k]


@nb.njit(parallel=True, cache=True, nogil=True)
def weighted_photons_dense(prob, pixel_ptr, frame, count, pixel_factor, out_rt):
    """out_rt[r, t] = pixel_factor[t] x sum over frames d with photons in pixel t of count * prob[d, r].

    prob (D, R) float32 dense block of probabilities; pixel_ptr (T + 1,) int64, frame (n,) int32,
    count (n,) float32: photons in CSC form (by pixel); pixel_factor (T,) float32 (1 / corr, or ones);
    out_rt (R, T) float32, overwritten.  Pixels in tiles of 32: a tile's rows (SIMD over rotations) are
    summed in a small buffer, then written transposed.
    """
    nrot, npix = out_rt.shape
    tile = 32
    for s in nb.prange((npix + tile - 1) // tile):
        buf = np.zeros((tile, nrot), np.float32)
        t0 = s * tile
        t1 = min(npix, t0 + tile)
        for t in range(t0, t1):
            row = buf[t - t0]
            for j in range(pixel_ptr[t], pixel_ptr[t + 1]):
                src = prob[frame[j]]
                cnt = count[j]
                for k in range(nrot):
                    row[k] += cnt * src[k]
        for k in range(nrot):
            for t in range(t0, t1):
                out_rt[k, t] = buf[t - t0, k] * pixel_factor[t]


@nb.njit(parallel=True, cache=True, nogil=True)
def weighted_photons_sparse(rot_ptr, frame_of, prob, frame_ptr, pixel, count, pixel_factor, out_rt):
    """Same sums as weighted_photons_dense from sparse probabilities grouped by rotation.

    rot_ptr (R + 1,) int64 into frame_of (n,) int64 / prob (n,) float64; frame_ptr, pixel, count:
    photons in CSR form (by frame); out_rt (R, T) float32, overwritten (each rotation its own row).
    Summed in float32 like the dense kernel, with unsigned pixel indices (1.8x faster than float64 products
    converted at every add).
    """
    nrot, npix = out_rt.shape
    for r in nb.prange(nrot):
        row = out_rt[r]
        for t in range(npix):
            row[t] = 0.0
        for k in range(rot_ptr[r], rot_ptr[r + 1]):
            d = frame_of[k]
            p = np.float32(prob[k])
            for j in range(frame_ptr[d], frame_ptr[d + 1]):
                row[np.uint64(pixel[j])] += p * count[j]
        for t in range(npix):
            row[t] *= pixel_factor[t]


@nb.njit(inline="always")
def _add_corners(acc, u, f, gzv, gzw, zv, zw):
    """acc[u .. u + 3] += f x (gz v, gz w, z v, z w): one cell's two z corners, numerator and denominator."""
    acc[u] += f * gzv
    acc[u + np.uint64(1)] += f * gzw
    acc[u + np.uint64(2)] += f * zv
    acc[u + np.uint64(3)] += f * zw


@nb.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def merge_views(acc, m, rotmats, mode, q_t, views_rt, weight_of_rot, parts):
    """Trilinear merge of views into 3-D: numerator += splat(view_r), denominator += splat(w_r).

    acc (V M^3 * 2,) float32: the flat (V, M, M, M, 2) volumes, numerator and denominator side by side
    so one cache line serves both; rotmats (R, 3, 3); mode (R,) int32: the volume of each rotation;
    q_t (3, T) float32; views_rt (R, T) float32;
    weight_of_rot (R,): rotations with weight 0 are skipped.  The x-range is split among ``parts``
    threads: every thread walks all pixels of all rotations but writes only the voxels of its own slab
    of x, so no two threads touch the same memory and no per-thread copies of the volume are needed.
    The splat is float32 throughout (``1 - x`` of a float32 would be float64 in Numba, and every add a
    conversion there and back: 1.6x slower) with unsigned indices (no negative-index wrap-around per add).
    """
    nrot, npix = views_rt.shape
    plane = m * m
    step_y, step_x = np.uint64(2 * m), np.uint64(2 * plane)
    one = np.float32(1.0)
    for p in nb.prange(parts):
        lo = (m * p) // parts * plane           # the slab's first cell, and the cell after it
        hi = (m * (p + 1)) // parts * plane
        cell = np.empty(npix, np.int64)
        fx, fy, fz = np.empty(npix, np.float32), np.empty(npix, np.float32), np.empty(npix, np.float32)
        for r in range(nrot):
            w = np.float32(weight_of_rot[r])
            if w <= 0.0:
                continue
            _cells(m, rotmats, r, q_t, cell, fx, fy, fz)
            row = views_rt[r]
            offset = np.uint64(mode[r]) * step_x * np.uint64(m)
            for t in range(npix):
                b = cell[t]
                if b < 0 or b + plane < lo or b >= hi:      # outside the grid, or no corner in the slab
                    continue
                v = row[t]
                x, y, z = fx[t], fy[t], fz[t]
                gx, gy, gz = one - x, one - y, one - z
                gzv, gzw, zv, zw = gz * v, gz * w, z * v, z * w
                u = np.uint64(2 * b) + offset
                if b >= lo:                                 # the corners at x
                    _add_corners(acc, u, gx * gy, gzv, gzw, zv, zw)
                    _add_corners(acc, u + step_y, gx * y, gzv, gzw, zv, zw)
                if b + plane < hi:                          # the corners at x + 1
                    u += step_x
                    _add_corners(acc, u, x * gy, gzv, gzw, zv, zw)
                    _add_corners(acc, u + step_y, x * y, gzv, gzw, zv, zw)


@nb.njit(parallel=True, cache=True, nogil=True)
def keep_within_window(photon_sums, log_prior, scale, view_sum, r0, window, best, best_rot, like, offsets):
    """The log-likelihoods of a block of rotations, and how many are within ``window`` of each frame's running best.

    photon_sums (D, n) float32 (:func:`photon_log_likelihood` of rotations r0 .. r0 + n); log_prior (n,),
    scale (D,), view_sum (n,) float64; like (D, n) float64 <- photon_sums + log_prior - scale x view_sum.
    window (D,); best (D,) float64 and best_rot (D,) int32: each frame's best so far, updated here first.
    offsets (D + 1,) int64 <- where each frame's kept entries begin (0 first).  Returns how many are kept;
    :func:`write_kept` writes them.
    """
    nf, n = like.shape
    offsets[0] = 0
    for d in nb.prange(nf):
        row = like[d]
        s = scale[d]
        top = -np.inf
        arg = 0
        for k in range(n):
            row[k] = np.float64(photon_sums[d, k]) + log_prior[k] - s * view_sum[k]
            if row[k] > top:
                top = row[k]
                arg = k
        if top > best[d]:
            best[d] = top
            best_rot[d] = arg + r0
        cut = best[d] - window[d]
        c = 0
        for k in range(n):
            if row[k] > cut:
                c += 1
        offsets[d + 1] = c
    for d in range(nf):
        offsets[d + 1] += offsets[d]
    return offsets[nf]


@nb.njit(parallel=True, cache=True, nogil=True)
def write_kept(like, best, window, r0, offsets, frame_id, start, frame, rot, value):
    """The entries :func:`keep_within_window` counted, at ``start`` of ``frame``, ``rot`` (int32) and ``value``
    (float64): frame order (``frame_id`` (D,) the frames' numbers), rotations ascending."""
    nf, n = like.shape
    for d in nb.prange(nf):
        row = like[d]
        cut = best[d] - window[d]
        i = start + offsets[d]
        for k in range(n):
            if row[k] > cut:
                frame[i] = frame_id[d]
                rot[i] = k + r0
                value[i] = row[k]
                i += 1


NORMALIZE_PARTS = 64   # the ranges of frames normalize_probabilities' threads share out (any number: the same sums)


@nb.njit(parallel=True, cache=True, nogil=True)
def normalize_probabilities(frame, rot, value, block_ptr, best, beta, window, prob_min, view_sum, log_prior, scale,
                            norm, scale_den, log_like, info, kept, weight_of_rot):
    """Turn kept (frame, rotation, log-likelihood) entries into pruned probabilities, in place.

    P = exp(beta_d (L - best_d)) over entries with L > best_d - window_d,
    normalised per frame; entries with P < prob_min are then dropped.
    The entries come in blocks of rotations (block b: entries ``block_ptr[b] .. block_ptr[b + 1]``), in
    frame order within a block.  Returns n: the first n entries of ``frame``, ``rot`` and ``value`` now
    hold the kept entries in the same order, ``value`` holding P.  Per frame (zeroed here):
    norm, scale_den (sum P u_r), log_like (sum P L), info (sum P log(P/w_r)),
    kept (count); per rotation: weight_of_rot (sum P scale_d).  Threads take ranges of frames (each frame's
    sums run over its entries in their order: the same sums as one thread), then one pass keeps the entries.
    """
    nf = norm.shape[0]
    nblocks = block_ptr.shape[0] - 1
    parts = min(NORMALIZE_PARTS, max(nf, 1))
    bounds = np.empty((nblocks, parts + 1), np.int64)      # block b's first entry of each frame range
    for b in nb.prange(nblocks):
        seg = frame[block_ptr[b]:block_ptr[b + 1]]
        for j in range(parts + 1):
            bounds[b, j] = block_ptr[b] + np.searchsorted(seg, (nf * j) // parts)
    for j in nb.prange(parts):
        for d in range((nf * j) // parts, (nf * (j + 1)) // parts):
            norm[d] = 0.0
            scale_den[d] = 0.0
            log_like[d] = 0.0
            info[d] = 0.0
            kept[d] = 0
        for b in range(nblocks):
            for i in range(bounds[b, j], bounds[b, j + 1]):
                d = frame[i]
                diff = value[i] - best[d]
                if diff > -window[d]:
                    norm[d] += np.exp(beta[d] * diff)
        for b in range(nblocks):
            for i in range(bounds[b, j], bounds[b, j + 1]):
                d = frame[i]
                diff = value[i] - best[d]
                p = -1.0                                 # dropped
                if diff > -window[d]:
                    p = np.exp(beta[d] * diff) / norm[d]
                    if p < prob_min:
                        p = -1.0
                    else:
                        r = rot[i]
                        scale_den[d] += p * view_sum[r]
                        log_like[d] += p * value[i]
                        info[d] += p * (np.log(p) - log_prior[r])
                        kept[d] += 1
                value[i] = p
    weight_of_rot[:] = 0.0
    out = 0
    for i in range(frame.shape[0]):
        p = value[i]
        if p < 0.0:
            continue
        d = frame[i]
        r = rot[i]
        weight_of_rot[r] += p * scale[d]
        frame[out] = d
        rot[out] = r
        value[out] = p
        out += 1
    return out


@nb.njit(cache=True, nogil=True)
def group_by_key(keys, num_keys):
    """A stable counting sort: ``(ptr (K + 1,) int64, order (n,) int64)``, the indices of ``keys`` (n,) (ints in
    0 .. K - 1) grouped by key, key k's at ``order[ptr[k]:ptr[k + 1]]`` in their original order.  O(n + K):
    numpy's stable argsort of 400 000 int32 pixels took 26 ms, this 1-2 ms."""
    ptr = np.zeros(num_keys + 1, np.int64)
    for i in range(keys.shape[0]):
        ptr[keys[i] + 1] += 1
    for k in range(num_keys):
        ptr[k + 1] += ptr[k]
    fill = ptr[:-1].copy()
    order = np.empty(keys.shape[0], np.int64)
    for i in range(keys.shape[0]):
        k = keys[i]
        order[fill[k]] = i
        fill[k] += 1
    return ptr, order


@nb.njit(parallel=True, cache=True, nogil=True)
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


@nb.njit(parallel=True, cache=True, nogil=True)
def add_friedel_mates(flat):
    """In place: each value of a C-ordered cube (flattened, (M^3,) float64) plus its mirror through the centre,
    which is the flat array reversed (Friedel's I(q) + I(-q)); no temporary volume."""
    n = flat.shape[0]
    for i in nb.prange(n // 2):
        s = flat[i] + flat[n - 1 - i]
        flat[i] = s
        flat[n - 1 - i] = s
    if n % 2:
        flat[n // 2] *= 2.0


@nb.njit(parallel=True, cache=True, nogil=True)
def divide_where_weighted(num, den):
    """In place: num <- num / den where den > 0, else 0 (flat (N,) float64; no temporary volume)."""
    for i in nb.prange(num.shape[0]):
        num[i] = num[i] / den[i] if den[i] > 0 else 0.0


@nb.njit(parallel=True, cache=True, nogil=True)
def change_and_power(new, old):
    """(sum (new - old)^2, sum new^2) over flat (N,) float64 volumes, in one pass."""
    change = 0.0
    power = 0.0
    for i in nb.prange(new.shape[0]):
        d = new[i] - old[i]
        change += d * d
        power += new[i] * new[i]
    return change, power
