"""The EMC shard step on a GPU: the same :class:`~spibatch.emc.types.ShardSums` as the CPU ``shard_step``.

Per chunk of frames (all of a shard when the dense (frames, rotations) float32
likelihood and probabilities fit the memory budget), per block of rotations:

* ``log_views`` slices the model on the rotations (pixel-major (T, n) float32) and sums the views;
* ``photon_log_likelihood`` fills the chunk's (frames, n) likelihood block;

then ``normalize_probabilities`` (one CUDA block per frame, pruned as on the CPU:
``PDIFF / beta`` window, ``PROB_MIN``), and per block of rotations again the per-frame sums
(through ``xp``), ``weighted_photons`` (photons by pixel, CSC) and ``merge_views`` (atomicAdd
into one (M, M, M, 2) float32 volume).

With a background (``pixels.background``: expected photons ``s_d V + b_d B``) ``views`` replaces
``log_views`` and ``photon_log_likelihood_bg`` reads the views themselves; the merge slices the
model on all pixels (``views``), ``weighted_photons_bg`` gives each photon its expected particle
share and ``particle_photons`` sums each frame's (the frames' ``particle_counts``), as the CPU step.  Model, views, likelihoods and probabilities are
float32 on the device; the sums of views, per-frame sums and the normaliser are float64.
The result comes back as numpy, so ``reduce``, ``finish``, MPI and Parsl are unchanged.

``device``: a :class:`~spibatch.kernels.device.Device` of kind "gpu": its ``xp`` holds the arrays and
its ``launch_runtime`` launches the kernels (CuPy, PyCUDA, or ``Device("gpu", "twin")``: the numpy
twins of the kernels, so this orchestration runs and is compared with the CPU path without a GPU).
"""

from __future__ import annotations

from time import perf_counter

import numpy as np

from spibatch.emc.types import PDIFF, PROB_MIN, TINY, PixelSet, Rotations, Shard, ShardSums, StepState
from spibatch.kernels.xp import free_bytes, synchronize, to_host

MAX_ROWS = 65535     # CUDA's limit on grid.y, where the kernels put pixels or frames: larger sets go in pieces


def _row_blocks(total: int) -> list[tuple[int, int]]:
    return [(a, min(a + MAX_ROWS, total)) for a in range(0, total, MAX_ROWS)]


def plan(num_frames: int, num_rot: int, num_pix: int, budget: int, top: int = 0) -> tuple[int, int]:
    """(frames per chunk, rotations per block) so that the working arrays fit in ``budget`` bytes.

    Half the budget for the chunk's likelihood and probabilities (8 bytes per frame and rotation; 12 more
    with ``top`` > 0: the sort's negated copy and int64 order), half for a block's views (4 B per pixel and
    rotation, twice) and its (frames, block) float64 temporaries of the per-frame sums (~48 B each); the block
    is a multiple of 32 rotations (a warp) unless it holds them all.  A chunk has at most MAX_ROWS frames.
    """
    per_pair = 8 + (12 if top > 0 else 0)
    chunk = int(max(1, min(num_frames, MAX_ROWS, (budget // 2) // (per_pair * num_rot))))
    block = int((budget // 2) // (8 * num_pix + 48 * chunk))
    if block >= num_rot:
        return chunk, num_rot
    return chunk, max(32, block // 32 * 32)


def _by_pixel(shard: Shard, f0: int, f1: int, num_pix: int):
    """:meth:`Shard.by_pixel` of frames f0..f1, kept on the shard for the next iteration (an argsort of all
    its photons each iteration would cost more than the GPU step); one chunking's worth is kept."""
    cache = shard.__dict__.setdefault("_by_pixel_chunks", {})
    key = (f0, f1, num_pix)
    if key not in cache:
        if f0 == 0:           # a new pass over the shard: drop another chunking's chunks
            cache.clear()
        cache[key] = shard.by_pixel(num_pix, f0, f1)
    return cache[key]


def gpu_shard_weights(model: np.ndarray, rotations: Rotations, pixels: PixelSet, shard: Shard, state: StepState,
                      *, device, **sizes) -> np.ndarray:
    """The per-rotation merge's first half on the device: the shard's rotations' weights sum_d P_dr scale_d (R,)
    float64 in the grid's numbering.  Nothing is kept: the second half (:func:`gpu_shard_step` with
    ``state.rotation_factor``) computes the likelihood again (a (frames, rotations) array per chunk would not
    stay on the device at scale)."""
    return gpu_shard_step(model, rotations, pixels, shard, state, device=device, weights_only=True, **sizes)


def gpu_shard_step(model: np.ndarray, rotations: Rotations, pixels: PixelSet, shard: Shard, state: StepState, *,
                   device, frame_chunk: int | None = None, rotation_block: int | None = None,
                   budget_bytes: int | None = None, weights_only: bool = False):
    """Expand, likelihood, probabilities and merge for one shard on the device: its partial sums (numpy).

    model (M, M, M) >= 0; device: a GPU :class:`~spibatch.kernels.device.Device` (this process takes its
    GPU on the first call).  frame_chunk / rotation_block override :func:`plan` (tests use small ones).
    With ``state.rotation_factor`` (the per-rotation merge) each rotation's weighted photons and weight are
    multiplied by its factor; ``weights_only``: no merge, the rotations' weights (R,) returned instead.
    """
    from spibatch.kernels.emc_gpu import EMCKernels

    searched = allowed = None
    num_grid = len(rotations)
    if state.candidates is not None and not state.candidates.everything(shard.first_frame, shard.num_frames,
                                                                         len(rotations)):
        # coarse-to-fine: the union of the frames' candidates, each frame's other pairs at -inf (dense on the GPU)
        searched, w_frame, w_rot = state.candidates.for_shard(shard.first_frame, shard.num_frames)
        rotations = rotations.subset(searched)
        allowed = np.zeros((shard.num_frames, len(searched)), bool)
        allowed[w_frame, w_rot] = True
    device.activate()          # this process's GPU (local rank / CUDA_VISIBLE_DEVICES), chosen once
    xp = device.xp
    work = _OnDevice(EMCKernels(device.launch_runtime, xp), xp, model, rotations, pixels, shard, allowed, state.top)
    factor = state.rotation_factor
    if factor is not None and not weights_only:
        work.factor = xp.asarray(factor if searched is None else factor[searched])
    if weights_only:
        work.weights = xp.zeros(len(rotations), np.float64)
    if budget_bytes is None:
        budget_bytes = int(0.6 * free_bytes(xp, fallback=2 ** 28))
    chunk, block = plan(shard.num_frames, len(rotations), len(pixels.q), budget_bytes, state.top)
    work.allocate(frame_chunk or chunk, rotation_block or block)
    results = {k: [] for k in ("scale_denominator", "log_likelihood", "mutual_info", "num_kept", "best_rotation",
                               "best_probability") + (("mode_probabilities",) if rotations.num_volumes > 1 else ())
               + (("particle_counts",) if pixels.background is not None else ())
               + (("top_rotations",) if state.top > 0 else ())}
    for f0 in range(0, shard.num_frames, work.chunk):
        for key, value in work.frames_step(f0, min(f0 + work.chunk, shard.num_frames), state).items():
            results[key].append(value)
    if weights_only:
        found = to_host(work.weights)
        if searched is None:
            return found
        weights = np.zeros(num_grid)
        weights[searched] = found
        return weights
    out = work.sums(results)
    if searched is not None:           # back to the grid's numbering
        for key in ("best_rotation", "top_rotations"):
            if key in out.frames:
                found = out.frames[key]
                out.frames[key] = np.where(found >= 0, searched[np.maximum(found, 0)], -1).astype(np.int32)
    return out


class _OnDevice:
    """One shard step's arrays on the device, its buffers and its clock (seconds per phase)."""

    def __init__(self, kernels, xp, model: np.ndarray, rotations: Rotations, pixels: PixelSet, shard: Shard,
                 allowed: np.ndarray | None = None, top: int = 0):
        self.kernels, self.xp, self.shard = kernels, xp, shard
        self.clock = {"expand": 0.0, "likelihood": 0.0, "normalize": 0.0, "merge": 0.0, "transfer": 0.0}
        t0 = perf_counter()
        self.rotations = rotations
        self.nrot, self.num_used, self.num_pix = len(rotations), pixels.num_used, len(pixels.q)
        self.model = xp.asarray(np.ascontiguousarray(model, np.float32))
        self.rotmats = xp.asarray(np.ascontiguousarray(rotations.matrices, np.float32))
        self.q_used = xp.asarray(np.ascontiguousarray(pixels.q[:self.num_used], np.float32))
        self.q_all = xp.asarray(np.ascontiguousarray(pixels.q, np.float32))
        self.corr_used = xp.asarray(np.ascontiguousarray(pixels.corr[:self.num_used], np.float32))
        self.inv_corr = None if np.all(pixels.corr == 1.0) else xp.asarray((1.0 / pixels.corr).astype(np.float32))
        self.log_prior = xp.asarray(np.log(rotations.weights))
        self.pixel = xp.asarray(shard.pixel)
        self.count = xp.asarray(shard.count)
        self.acc = xp.zeros(model.shape + (2,), np.float32)      # (M, M, M, 2), or (V, M, M, M, 2) with modes
        self.mode = xp.asarray(np.ascontiguousarray(rotations.mode, np.int32))
        self.background = None
        self.allowed, self.top = allowed, top   # coarse-to-fine: (D, R) bool, the pairs to keep; top rotations wanted
        self.factor = None       # the per-rotation merge: (R,) each rotation's factor (views and weight)
        self.weights = None      # weights only: (R,) float64, the rotations' weights summed here, nothing merged
        if pixels.background is not None:
            self.background = xp.asarray(np.ascontiguousarray(pixels.background, np.float32))
            self.corr_all = xp.asarray(np.ascontiguousarray(pixels.corr, np.float32))
        synchronize(xp)
        self.clock["transfer"] += perf_counter() - t0

    def allocate(self, chunk: int, block: int) -> None:
        """Buffers for ``chunk`` frames x ``block`` rotations at a time."""
        xp = self.xp
        self.chunk, self.block = chunk, block
        # flat buffers; a (rows, n) view of their first rows * n entries is C-contiguous for any n <= block
        self.view_buf = xp.empty(self.num_pix * block, np.float32)
        self.out_buf = xp.empty(chunk * block, np.float32) if block < self.nrot else None
        # with a background, the merge's views of all pixels (the plan's second 4 B per pixel and rotation)
        self.model_view_buf = None if self.background is None else xp.empty(self.num_pix * block, np.float32)
        self.u = xp.zeros(self.nrot, np.float64)

    def _blocks(self):
        for r0 in range(0, self.nrot, self.block):
            r1 = min(r0 + self.block, self.nrot)
            yield r0, r1, r1 - r0

    def frames_step(self, f0: int, f1: int, state: StepState) -> dict:
        """Frames f0..f1 of the shard: likelihood, probabilities, their merge into ``acc``; per-frame sums."""
        xp, shard = self.xp, self.shard
        first, c = shard.first_frame, f1 - f0
        t0 = perf_counter()
        frame_ptr = xp.asarray(shard.ptr[f0:f1 + 1])
        frame_end = xp.asarray(shard.used_end[f0:f1])
        beta = xp.asarray(np.ascontiguousarray(state.beta[first + f0:first + f1], np.float64))
        scale = xp.asarray(np.ascontiguousarray(state.scales[first + f0:first + f1], np.float64))
        background_scale = None
        if self.background is not None:
            levels = state.background_scales
            background_scale = xp.asarray(np.ones(c) if levels is None else
                                          np.ascontiguousarray(levels[first + f0:first + f1], np.float64))
        by_pixel = [xp.asarray(a) for a in _by_pixel(shard, f0, f1, self.num_pix)]
        synchronize(xp)
        self.clock["transfer"] += perf_counter() - t0
        like = self._likelihood(c, frame_ptr, frame_end, scale, background_scale)
        if self.allowed is not None:   # the pairs no frame's candidates hold: out of the probabilities
            like[~xp.asarray(self.allowed[f0:f1])] = -np.inf
        t0 = perf_counter()
        prob = xp.empty_like(like)
        best = xp.empty(c, np.float64)
        norm = xp.empty(c, np.float64)
        self.kernels.normalize_probabilities(like, beta, PDIFF, PROB_MIN, prob, best, norm)
        out = {"best_rotation": xp.where(norm > 0, xp.argmax(like, axis=1), -1).astype(np.int32),   # -1: none
               "best_probability": xp.where(norm > 0, 1.0 / xp.where(norm > 0, norm, 1.0), 0.0)}
        if self.top > 0:               # each frame's most probable rotations, -1 past the ones it kept
            order = xp.argsort(-prob, axis=1)[:, :self.top]
            out["top_rotations"] = xp.where(xp.take_along_axis(prob, order, axis=1) > 0, order, -1).astype(np.int32)
        synchronize(xp)
        self.clock["normalize"] += perf_counter() - t0
        out.update(self._merge(like, prob, scale, by_pixel, frame_ptr, frame_end, background_scale))
        return out

    def _likelihood(self, c: int, frame_ptr, frame_end, scale, background_scale=None):
        """The (c, R) float32 log-likelihoods of c frames, block of rotations by block (``background_scale``
        (c,) float64: with the pixels' background)."""
        xp, kernels = self.xp, self.kernels
        like = xp.empty((c, self.nrot), np.float32)
        for r0, r1, n in self._blocks():
            t0 = perf_counter()
            logv = self.view_buf[:self.num_used * n].reshape(self.num_used, n)
            u_block = xp.zeros(n, np.float64)
            for a, b in _row_blocks(self.num_used):
                if self.background is None:
                    kernels.log_views(self.model, self.rotmats[r0:r1], self.mode[r0:r1], self.q_used[a:b],
                                      self.corr_used[a:b], TINY, logv[a:b], u_block)
                else:           # the views themselves: log(s V + b B) depends on the frame
                    kernels.views(self.model, self.rotmats[r0:r1], self.mode[r0:r1], self.q_used[a:b],
                                  self.corr_used[a:b], logv[a:b], u_block)
            self.u[r0:r1] = u_block
            synchronize(xp)
            t1 = perf_counter()
            target = like if n == self.nrot else self.out_buf[:c * n].reshape(c, n)
            if self.background is None:
                kernels.photon_log_likelihood(logv, frame_ptr, frame_end, self.pixel, self.count,
                                              self.log_prior[r0:r1], scale, u_block, target)
            else:
                kernels.photon_log_likelihood_bg(logv, frame_ptr, frame_end, self.pixel, self.count,
                                                 self.log_prior[r0:r1], scale, background_scale,
                                                 self.background[:self.num_used], u_block, TINY, target)
            if n != self.nrot:
                like[:, r0:r1] = target
            synchronize(xp)
            self.clock["expand"] += t1 - t0
            self.clock["likelihood"] += perf_counter() - t1
        return like

    def _merge(self, like, prob, scale, by_pixel, frame_ptr, frame_end, background_scale=None) -> dict:
        """Per block of rotations: the per-frame sums, then the weighted photons merged into ``acc`` (with a
        background: each photon's expected particle share, and the frames' ``particle_counts``)."""
        xp, kernels = self.xp, self.kernels
        pixel_ptr, by_frame, by_count = by_pixel
        c = like.shape[0]
        scale_den, log_like, info = (xp.zeros(c, np.float64) for _ in range(3))
        kept = xp.zeros(c, np.int64)
        volumes = self.rotations.num_volumes
        mode_prob = xp.zeros((c, volumes), np.float64)
        particle = None if self.background is None else xp.zeros(c, np.float64)
        for r0, r1, n in self._blocks():
            t0 = perf_counter()
            p = prob if n == self.nrot else xp.ascontiguousarray(prob[:, r0:r1])
            p64 = p.astype(np.float64)
            scale_den += p64 @ self.u[r0:r1]
            block_like = like[:, r0:r1] if self.allowed is None else xp.where(p64 > 0, like[:, r0:r1], 0.0)
            log_like += (p64 * block_like).sum(axis=1)
            positive = p64 > 0
            info += xp.where(positive, p64 * (xp.log(xp.where(positive, p64, 1.0)) - self.log_prior[None, r0:r1]),
                             0.0).sum(axis=1)
            kept += positive.sum(axis=1)
            if volumes > 1:
                block_mode = self.rotations.mode[r0:r1]
                for k in np.unique(block_mode):
                    mode_prob[:, k] += p64[:, xp.asarray(np.flatnonzero(block_mode == k))].sum(axis=1)
            weight_of_rot = scale @ p64
            del p64, positive
            if self.weights is not None:
                self.weights[r0:r1] += weight_of_rot
                synchronize(xp)
                self.clock["normalize"] += perf_counter() - t0
                continue
            if self.factor is not None:
                weight_of_rot *= self.factor[r0:r1]
            weight_of_rot = weight_of_rot.astype(np.float32)
            synchronize(xp)
            t1 = perf_counter()
            views = self.view_buf[:self.num_pix * n].reshape(self.num_pix, n)
            if self.background is not None:
                model_views = self.model_view_buf[:self.num_pix * n].reshape(self.num_pix, n)
                u_all = xp.zeros(n, np.float64)        # not used: the likelihood's sums are of the used pixels
                for a, b in _row_blocks(self.num_pix):
                    kernels.views(self.model, self.rotmats[r0:r1], self.mode[r0:r1], self.q_all[a:b],
                                  self.corr_all[a:b], model_views[a:b], u_all)
                kernels.particle_photons(p, frame_ptr, frame_end, self.pixel, self.count, model_views, scale,
                                         background_scale, self.background, TINY, particle)
            for a, b in _row_blocks(self.num_pix):
                if self.background is None:
                    kernels.weighted_photons(p, pixel_ptr[a:b + 1], by_frame, by_count, views[a:b])
                else:
                    kernels.weighted_photons_bg(p, pixel_ptr[a:b + 1], by_frame, by_count, model_views[a:b], scale,
                                                background_scale, self.background[a:b], TINY, views[a:b])
                if self.inv_corr is not None:          # photons / corr: the model is free of the detector
                    views[a:b] *= self.inv_corr[a:b, None]
                if self.factor is not None:
                    views[a:b] *= self.factor[None, r0:r1].astype(np.float32)
                kernels.merge_views(self.acc, self.rotmats[r0:r1], self.mode[r0:r1], self.q_all[a:b], views[a:b],
                                    weight_of_rot)
            synchronize(xp)
            self.clock["normalize"] += t1 - t0
            self.clock["merge"] += perf_counter() - t1
        out = {"scale_denominator": scale_den, "log_likelihood": log_like, "mutual_info": info,
               "num_kept": kept.astype(np.int32)}
        if volumes > 1:
            out["mode_probabilities"] = mode_prob
        if particle is not None:
            out["particle_counts"] = particle
        return out

    def sums(self, results: dict[str, list]) -> ShardSums:
        """The shard's sums on the host, from the per-chunk ``results`` and ``acc``."""
        shard = self.shard
        t0 = perf_counter()
        host = {k: np.concatenate([to_host(v) for v in parts]) for k, parts in results.items()}
        acc = to_host(self.acc)
        self.clock["transfer"] += perf_counter() - t0
        frames = {
            "counts": shard.counts.copy(),
            "scale_denominator": host["scale_denominator"],
            "log_likelihood": host["log_likelihood"] - shard.log_factorial,
            "mutual_info": host["mutual_info"],
            "num_kept": host["num_kept"],
            "best_rotation": host["best_rotation"],
            "best_probability": host["best_probability"],
        }
        for key in ("mode_probabilities", "particle_counts", "top_rotations"):
            if key in host:
                frames[key] = host[key]
        return ShardSums(shard.first_frame, acc[..., 0].astype(np.float64), acc[..., 1].astype(np.float64), frames,
                         self.clock)
