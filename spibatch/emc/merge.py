"""The EMC merge on the CPU (the M step's sums): one shard's kept probabilities and photons into 3-D.

Per block of ``MERGE_BLOCK`` rotations the photons weighted by P (divided by the pixel's corr) come from a
dense kernel (SIMD over rotations) where many frames share the block's rotations, from a sparse one (scatter
per kept entry) where few do; then ``merge_views`` splats them and the rotations' weights into one
(M, M, M, 2) float32 volume.  With a background the block's model views are recomputed on all pixels, so
each photon gives the model only its expected particle share.
"""

from __future__ import annotations

import numpy as np

from spibatch.emc.types import TINY, PixelSet, Rotations, Shard

MERGE_BLOCK = 256   # rotations per merge block (long SIMD rows in the dense weighted-photon kernel)


def merge(shape: tuple, rotations: Rotations, pixels: PixelSet, shard: Shard, d: np.ndarray, r: np.ndarray,
           prob: np.ndarray, weight_of_rot: np.ndarray, slots: int, factor: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Maximize: photons weighted by P (divided by the pixel's corr) and the weights P * scale, merged into 3-D
    per rotation block (``factor`` (R,): each rotation's both multiplied by it, the per-rotation merge).
    Returns the two sums as float32 views of one interleaved buffer (``shape``): a float64 copy of each would
    be 2 x 8 bytes a voxel more at the peak; the sums are float64 from the first addition on.

    Each block's weighted photons come from a dense kernel (SIMD over
    rotations) when many frames share its rotations, from a sparse one
    (scatter per kept entry) when few do.
    """
    from spibatch.kernels.emc_cpu import merge_views, weighted_photons_dense, weighted_photons_sparse
    from spibatch.kernels.emc_merge_blocks import fill_dense_block

    nrot, nf, npix, m = len(rotations), shard.num_frames, len(pixels.q), shape[-1]
    block = MERGE_BLOCK
    inv_corr = (1.0 / pixels.corr).astype(np.float32)
    q_t = np.ascontiguousarray(pixels.q.T, np.float32)
    csc = None                                          # the by-pixel form, built when a dense block needs it
    sums = np.zeros(int(np.prod(shape)) * 2, np.float32)   # float32: half the cache footprint, 1.4x faster
    views = np.empty((block, npix), np.float32)         # rotation-major, float32 like the accumulators
    dense_prob = np.empty((nf, block), np.float32)
    for r0, r1, lo, hi, sparse in _merge_blocks(nrot, d, r, prob, shard):
        n = r1 - r0
        if sparse is not None:
            weighted_photons_sparse(*sparse, shard.ptr, shard.pixel, shard.count, inv_corr, views[:n])
        else:
            block_prob = dense_prob[:, :n]
            fill_dense_block(d, r, prob, lo, hi, r0, block_prob)
            if csc is None:
                csc = shard.by_pixel(npix)
            weighted_photons_dense(block_prob, *csc, inv_corr, views[:n])
        merge_views(sums, m, rotations.matrices[r0:r1], rotations.mode[r0:r1], q_t, views[:n],
                    _rotation_weights(views[:n], weight_of_rot[r0:r1], factor, r0, r1), slots)
    sums = sums.reshape(shape + (2,))
    return sums[..., 0], sums[..., 1]     # float32 views: whoever adds them up converts as it adds (no copies)


def _merge_blocks(nrot: int, d: np.ndarray, r: np.ndarray, prob: np.ndarray, shard: Shard):
    """The merge's blocks of MERGE_BLOCK rotations that hold kept entries: ``(r0, r1, lo, hi, sparse)``, the
    block's entries ``lo .. hi`` of ``d``, ``r``, ``prob``; ``sparse`` None where the dense kernel is cheaper
    (many frames share the block's rotations: its inner loop is SIMD), else the entries by rotation
    ``(rot_ptr (n + 1,) int64, frame (k,) int64, prob (k,))`` for the scattering kernel.  Entries come in
    likelihood-block order, and likelihood blocks divide merge blocks: ``r // MERGE_BLOCK`` is sorted."""
    from spibatch.kernels.emc_cpu import group_by_key
    from spibatch.kernels.emc_merge_blocks import merge_block_bounds

    block, nf = MERGE_BLOCK, shard.num_frames
    num_blocks = (nrot + block - 1) // block
    starts, photons = merge_block_bounds(r, block, num_blocks, d, np.diff(shard.ptr))
    for k, r0 in enumerate(range(0, nrot, block)):
        lo, hi = int(starts[k]), int(starts[k + 1])
        if lo == hi:
            continue
        r1 = min(r0 + block, nrot)
        sparse = None
        if 8 * photons[k] < (shard.num_entries + nf) * (r1 - r0):
            rot_ptr, by_rot = group_by_key(r[lo:hi] - r0, r1 - r0)
            sparse = (rot_ptr, d[lo:hi][by_rot].astype(np.int64), prob[lo:hi][by_rot])
        yield r0, r1, lo, hi, sparse


def merge_with_background(model: np.ndarray, rotations: Rotations, pixels: PixelSet, shard: Shard, d: np.ndarray, r: np.ndarray,
              prob: np.ndarray, weight_of_rot: np.ndarray, slots: int, scale: np.ndarray, background: tuple,
              factor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_merge` with a background: each photon weighted by its expected particle share
    ``s V / (s V + b B)`` (the block's views of all pixels recomputed); also the frames' particle photons
    on used pixels (D,) float64 (``particle_counts``)."""
    import numba

    from spibatch.kernels.emc_cpu import merge_views, views_by_rotation
    from spibatch.kernels.emc_cpu_bg import weighted_photons_dense_bg, weighted_photons_sparse_bg
    from spibatch.kernels.emc_merge_blocks import fill_dense_block

    shape = model.shape
    nrot, nf, npix, m = len(rotations), shard.num_frames, len(pixels.q), shape[-1]
    bgs, bg_rows = background
    scale32, bgs32 = scale.astype(np.float32), bgs.astype(np.float32)
    tiny = np.float32(TINY)
    flat = np.ascontiguousarray(model, np.float32).reshape(-1)
    corr = pixels.corr.astype(np.float32)
    block = MERGE_BLOCK
    inv_corr = (1.0 / pixels.corr).astype(np.float32)
    q_t = np.ascontiguousarray(pixels.q.T, np.float32)
    csc = None
    sums = np.zeros(int(np.prod(shape)) * 2, np.float32)
    views = np.empty((block, npix), np.float32)
    model_views = np.empty((block, npix), np.float32)
    model_views_t_buf = np.empty(npix * block, np.float32)     # flat: C-contiguous (npix, n) views, as above
    view_sum = np.empty(block)
    dense_prob_buf = np.empty(nf * block, np.float32)
    particle = np.zeros(nf)
    particle_rows = np.zeros((numba.config.NUMBA_NUM_THREADS, nf))    # the dense kernel's, one row per thread
    for r0, r1, lo, hi, sparse in _merge_blocks(nrot, d, r, prob, shard):
        n = r1 - r0
        views_by_rotation(flat, m, rotations.matrices[r0:r1], rotations.mode[r0:r1], q_t, corr, model_views[:n],
                          view_sum[:n])
        if sparse is not None:
            rot_ptr, frame_of, prob_of = sparse
            entry_particle = np.empty(len(frame_of))
            weighted_photons_sparse_bg(rot_ptr, frame_of, prob_of, shard.ptr, shard.used_end, shard.pixel,
                                       shard.count, inv_corr, model_views[:n], scale, bgs, bg_rows, tiny, views[:n],
                                       entry_particle)
            particle += np.bincount(frame_of, entry_particle, nf)
        else:
            block_prob = dense_prob_buf[:nf * n].reshape(nf, n)
            fill_dense_block(d, r, prob, lo, hi, r0, block_prob)
            if csc is None:
                csc = shard.by_pixel(npix)
            model_views_t = model_views_t_buf[:npix * n].reshape(npix, n)
            model_views_t[...] = model_views[:n].T
            weighted_photons_dense_bg(block_prob, *csc, inv_corr, model_views_t, scale32, bgs32, bg_rows, tiny,
                                      pixels.num_used, views[:n], particle_rows)
        merge_views(sums, m, rotations.matrices[r0:r1], rotations.mode[r0:r1], q_t, views[:n],
                    _rotation_weights(views[:n], weight_of_rot[r0:r1], factor, r0, r1), slots)
    sums = sums.reshape(shape + (2,))
    return sums[..., 0], sums[..., 1], particle + particle_rows.sum(axis=0)


def _rotation_weights(views: np.ndarray, weights: np.ndarray, factor: np.ndarray | None, r0: int, r1: int
                      ) -> np.ndarray:
    """A merge block's rotation weights (n,); with ``factor`` (the per-rotation merge) ``views`` (n, T) and the
    weights multiplied by ``factor[r0:r1]``."""
    if factor is None:
        return weights
    views *= factor[r0:r1, None].astype(np.float32)
    return weights * factor[r0:r1]
