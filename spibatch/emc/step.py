"""The EMC shard step on the CPU (Numba): ``(model, rotations, pixels, shard, state) -> ShardSums``.

What it computes is in :mod:`spibatch.emc.types`.  Here, per block of ``rotation_block``
rotations: the views' logs (float32, pixel-major), the likelihood of every frame of the shard,
the running best per frame and the entries within ``PDIFF / beta`` of it, kept as sparse
(frame, rotation, value) triplets -- no dense frames x rotations array outlives one block;
then the probabilities are normalised and pruned in one pass (an :class:`Expectation`), and the
photons weighted by them are merged into 3-D (:mod:`spibatch.emc.merge`).  The per-rotation merge
needs every frame's rotation weights first: :func:`shard_weights` computes a shard's and keeps its
expectation on the shard, and the executor's next :func:`shard_step` with ``state.rotation_factor``
only merges it.  The GPU twin of this
function is :func:`spibatch.emc.gpu_step.gpu_shard_step`; which of the two runs is chosen once,
by :func:`spibatch.emc.executors.step_function`.

With a background (``pixels.background``) the likelihood reads the views themselves (the log of
``s_d V + b_d B`` depends on the frame) and the merge recomputes each block's views of all pixels
to give the model only each photon's expected particle share; both branch once per block, so the
path without a background runs the same kernels as before.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from time import perf_counter

import numpy as np

from spibatch.detector import Detector
from spibatch.emc.kept import KeptEntries
from spibatch.emc.merge import MERGE_BLOCK, merge, merge_with_background
from spibatch.emc.types import PDIFF, PROB_MIN, TINY, PixelSet, Rotations, Shard, ShardSums, StepState
from spibatch.photons import Photons

def _positive_env(name: str, default: int) -> int:
    """A tuning knob from the environment: a whole number >= 1, else ``default`` (said once in the log)."""
    text = os.environ.get(name)
    if text is None:
        return default
    if text.strip().isdigit() and int(text) >= 1:
        return int(text)
    logging.getLogger("spibatch").warning("%s=%r is not a whole number >= 1: %d is used", name, text[:40], default)
    return default


REFINE_BLOCK = _positive_env("SPIBATCH_REFINE_BLOCK", 32)   # likelihood block of a coarse-to-fine search


def _threads() -> int:
    import numba

    return numba.get_num_threads()


def rotation_block_size(num_used: int) -> int:
    """Rotations per likelihood block: a power of two dividing MERGE_BLOCK, log-views (T x block float64) ~8 MB."""
    target = int(np.clip(1_000_000 // max(num_used, 1), 32, MERGE_BLOCK))
    return 1 << (target.bit_length() - 1)


def shard_step(model: np.ndarray, rotations: Rotations, pixels: PixelSet, shard: Shard,
               state: StepState, *, rotation_block: int | None = None) -> ShardSums:
    """Expand, likelihood, probabilities and merge for one shard on the CPU: its partial sums.

    model (M, M, M) float64 (the current model, >= 0), or (V, M, M, M) with modes (``rotations.mode`` says
    which volume each orientation slices; the frames' ``mode_probabilities`` (D, V) are then summed too);
    rotation_block: rotations per likelihood block (default :func:`rotation_block_size`).  With
    ``state.rotation_factor`` (the per-rotation merge, :func:`shard_weights` first) the expectation
    :func:`shard_weights` kept on the shard is merged, if it is this iteration's; else it is computed.
    """
    model = np.ascontiguousarray(model, np.float64)
    expected = kept_expectation(shard, state) or _expect(model, rotations, pixels, shard, state, rotation_block)
    return _maximize(model, rotations, pixels, shard, state, expected)


def shard_weights(model: np.ndarray, rotations: Rotations, pixels: PixelSet, shard: Shard,
                  state: StepState, *, rotation_block: int | None = None, keep: bool = True) -> np.ndarray:
    """The per-rotation merge's first half for one shard: its rotations' weights sum_d P_dr scale_d, (R,)
    float64 in the grid's numbering (0 for rotations no frame of the shard kept).  ``keep``: the expectation
    stays on the shard for this iteration's :func:`shard_step` (which then only merges)."""
    model = np.ascontiguousarray(model, np.float64)
    expected = _expect(model, rotations, pixels, shard, state, rotation_block)
    if keep:
        shard.__dict__["_expectation"] = expected
    return expected.grid_weights(len(rotations))


def rotation_factor(weights: np.ndarray) -> np.ndarray:
    """The per-rotation merge's factors from the rotations' weights summed over all frames (R,): 1 / weight,
    0 where a rotation has none."""
    weights = np.asarray(weights, np.float64)
    out = np.zeros_like(weights)
    np.divide(1.0, weights, out=out, where=weights > 0)
    return out


@dataclass
class Expectation:
    """One shard's E step: kept (frame, rotation, P) entries (rotation numbered in ``searched``, the grid's
    rotations the shard searched, None: all), the per-rotation weights sum_d P scale_d (n_searched,), the frames'
    sums and the phases' seconds so far; ``iteration``: the step it belongs to."""

    iteration: int
    searched: np.ndarray | None
    frame: np.ndarray
    rotation: np.ndarray
    prob: np.ndarray
    weight_of_rot: np.ndarray
    frames: dict
    clock: dict

    def grid_weights(self, num_rot: int) -> np.ndarray:
        """weight_of_rot in the grid's numbering: (num_rot,) float64."""
        if self.searched is None:
            return self.weight_of_rot.astype(np.float64, copy=True)
        out = np.zeros(num_rot)
        out[self.searched] = self.weight_of_rot
        return out

    def arrays(self) -> dict:
        """Everything as named arrays (an HTC task's file, :func:`expectation_from`)."""
        out = {"iteration": np.int64(self.iteration), "frame": self.frame, "rotation": self.rotation,
               "prob": self.prob, "weight_of_rot": self.weight_of_rot,
               "clock": np.array([self.clock.get(k, 0.0) for k in CLOCK])}
        if self.searched is not None:
            out["searched"] = self.searched
        out.update({f"frames/{k}": v for k, v in self.frames.items()})
        return out


CLOCK = ("expand", "likelihood", "normalize", "merge")


def expectation_from(arrays) -> Expectation:
    """The inverse of :meth:`Expectation.arrays` (a mapping of arrays, e.g. an opened .npz)."""
    return Expectation(int(arrays["iteration"]), arrays["searched"] if "searched" in arrays else None,
                       arrays["frame"], arrays["rotation"], arrays["prob"], arrays["weight_of_rot"],
                       {k[len("frames/"):]: arrays[k] for k in arrays if k.startswith("frames/")},
                       dict(zip(CLOCK, (float(x) for x in arrays["clock"]))))


def kept_expectation(shard: Shard, state: StepState) -> Expectation | None:
    """The expectation :func:`shard_weights` left on ``shard`` for this iteration (taken off), else None."""
    expected = shard.__dict__.pop("_expectation", None)
    if expected is None or state.rotation_factor is None or expected.iteration != state.iteration:
        return None
    return expected


def _searched(rotations: Rotations, shard: Shard, state: StepState):
    """Coarse-to-fine: (the grid's rotations this shard searches, [frame, rotation] wanted pairs), or (None, None)
    where every frame wants every rotation (the plain step)."""
    if state.candidates is None or state.candidates.everything(shard.first_frame, shard.num_frames,
                                                               len(rotations)):
        return None, None
    searched, *wanted = state.candidates.for_shard(shard.first_frame, shard.num_frames)
    return searched, wanted


def _background(pixels: PixelSet, state: StepState, first: int, nf: int) -> tuple | None:
    """(the frames' background scales (D,) float64, the pixels' background (T,) float32), or None."""
    if pixels.background is None:
        return None
    bgs = state.background_scales
    return (np.ascontiguousarray(np.ones(nf) if bgs is None else bgs[first:first + nf], np.float64),
            pixels.background.astype(np.float32))


def _expect(model: np.ndarray, rotations: Rotations, pixels: PixelSet, shard: Shard, state: StepState,
            rotation_block: int | None) -> Expectation:
    """Expand, likelihood and probabilities of one shard: its :class:`Expectation`."""
    from spibatch.kernels.emc_cpu import normalize_probabilities

    first, nf = shard.first_frame, shard.num_frames
    searched, wanted = _searched(rotations, shard, state)
    if searched is not None:
        rotations = rotations.subset(searched)
    nrot = len(rotations)
    beta = state.beta[first:first + nf]
    scale = state.scales[first:first + nf]
    window = PDIFF / beta
    log_prior = np.log(rotations.weights)
    clock = {"expand": 0.0, "likelihood": 0.0, "normalize": 0.0, "merge": 0.0}
    u, best, best_rot, d, r, value, block_ptr = _kept_likelihoods(
        model, rotations, pixels, shard, scale, window, log_prior, rotation_block or _block(pixels.num_used, wanted),
        _threads(), clock, _background(pixels, state, first, nf), wanted)
    t0 = perf_counter()
    norm, scale_den, log_like, info = (np.empty(nf) for _ in range(4))
    num_kept = np.empty(nf, np.int32)
    weight_of_rot = np.empty(nrot)
    n = normalize_probabilities(d, r, value, block_ptr, best, beta, window, PROB_MIN, u, log_prior, scale,
                                norm, scale_den, log_like, info, num_kept, weight_of_rot)
    d, r, prob = d[:n], r[:n], value[:n]
    frames = {
        "counts": shard.counts.copy(),
        "scale_denominator": scale_den,
        "log_likelihood": log_like - shard.log_factorial,
        "mutual_info": info,
        "num_kept": num_kept,
        "best_rotation": best_rot,                                                # the most likely rotation,
        "best_probability": np.where(norm > 0, 1.0 / np.where(norm > 0, norm, 1.0), 0.0),   # exp(0) / norm
    }
    if state.top > 0:
        frames["top_rotations"] = top_rotations(d, r, prob, nf, state.top)
    if searched is not None:           # back to the grid's numbering
        frames["best_rotation"] = np.where(best_rot >= 0, searched[np.maximum(best_rot, 0)], -1).astype(np.int32)
        if state.top > 0:
            top = frames["top_rotations"]
            frames["top_rotations"] = np.where(top >= 0, searched[np.maximum(top, 0)], -1).astype(np.int32)
    if rotations.num_volumes > 1:
        volumes = rotations.num_volumes
        frames["mode_probabilities"] = np.bincount(d.astype(np.int64) * volumes + rotations.mode[r], prob,
                                                   nf * volumes).reshape(nf, volumes)
    clock["normalize"] += perf_counter() - t0
    return Expectation(state.iteration, searched, d, r, prob, weight_of_rot, frames, clock)


def _maximize(model: np.ndarray, rotations: Rotations, pixels: PixelSet, shard: Shard, state: StepState,
              expected: Expectation) -> ShardSums:
    """Merge one shard's expectation: its :class:`ShardSums`.  With ``state.rotation_factor`` (R,) (the
    per-rotation merge: 1 / each rotation's weight summed over all frames, 0 where none) each rotation's
    weighted photons and weight are multiplied by its factor."""
    searched, frames, clock = expected.searched, dict(expected.frames), dict(expected.clock)
    factor = state.rotation_factor
    if searched is not None:
        rotations = rotations.subset(searched)
        factor = None if factor is None else factor[searched]
    d, r, prob = expected.frame, expected.rotation, expected.prob
    background = _background(pixels, state, shard.first_frame, shard.num_frames)
    t1 = perf_counter()
    if background is None:
        numerator, denominator = merge(model.shape, rotations, pixels, shard, d, r, prob, expected.weight_of_rot,
                                        _threads(), factor)
    else:
        scale = state.scales[shard.first_frame:shard.first_frame + shard.num_frames]
        numerator, denominator, frames["particle_counts"] = merge_with_background(model, rotations, pixels, shard, d, r, prob,
                                                                     expected.weight_of_rot, _threads(), scale,
                                                                     background, factor)
    clock["merge"] += perf_counter() - t1
    return ShardSums(shard.first_frame, numerator, denominator, frames, clock)


def top_rotations(frame: np.ndarray, rot: np.ndarray, prob: np.ndarray, num_frames: int, top: int) -> np.ndarray:
    """(num_frames, top) int32: each frame's ``top`` most probable rotations of the kept (frame, rot, prob)
    entries, most probable first, -1 where a frame kept fewer."""
    order = np.lexsort((-prob, frame))
    frame, rot = frame[order].astype(np.int64), rot[order]
    starts = np.searchsorted(frame, np.arange(num_frames))
    rank = np.arange(len(frame)) - starts[frame]
    keep = rank < top
    out = np.full((num_frames, top), -1, np.int32)
    out[frame[keep], rank[keep]] = rot[keep]
    return out


def _block(num_used: int, wanted) -> int:
    """The likelihood block: :func:`rotation_block_size`, or smaller in a coarse-to-fine search (a block is
    evaluated for every frame that wants one of its rotations: the fewer it holds, the less is wasted)."""
    size = rotation_block_size(num_used)
    return size if wanted is None else min(size, REFINE_BLOCK)


def _kept_likelihoods(model: np.ndarray, rotations: Rotations, pixels: PixelSet, shard: Shard, scale: np.ndarray,
                      window: np.ndarray, log_prior: np.ndarray, block: int, slots: int, clock: dict,
                      background: tuple | None = None, wanted: list[np.ndarray] | None = None):
    """Expand and likelihood per block of ``block`` rotations, keeping what is within ``window`` of each frame's
    running best: ``(u (R,) view sums, best (D,), best_rot (D,) int32, frame, rotation (n,) int32, value (n,),
    block_ptr (blocks + 1,) int64)``: block b's entries are ``block_ptr[b] .. block_ptr[b + 1]``, by frame.

    background: None, or (the frames' background scales (D,) float64, the rows' background (T,) float32).
    wanted: None (every frame, every rotation), or ``[frame (n,), rotation (n,)]``, the only pairs to
    evaluate (coarse-to-fine): a block's likelihood is then computed for the frames that want one of its
    rotations only, and its other pairs are left out."""
    from spibatch.kernels.emc_cpu import keep_within_window, photon_log_likelihood, views_by_rotation, write_kept
    from spibatch.kernels.emc_cpu_bg import photon_log_likelihood_bg

    nf, nrot, m = shard.num_frames, len(rotations), model.shape[-1]
    flat = np.ascontiguousarray(model, np.float32).reshape(-1)
    q_t = np.ascontiguousarray(pixels.q[:pixels.num_used].T, np.float32)
    corr = pixels.corr[:pixels.num_used].astype(np.float32)
    u = np.empty(nrot)
    best = np.full(nf, -np.inf)
    best_rot = np.full(nf, -1, np.int32)
    kept = KeptEntries((nrot + block - 1) // block)
    offsets = np.empty(nf + 1, np.int64)
    views = np.empty((block, pixels.num_used), np.float32)
    # flat buffers: a (rows, n) view of their first rows * n entries is C-contiguous for any n <= block, so the
    # last, shorter block runs the kernels' contiguous (vectorised) code too, not the strided one ('A' layout)
    logv_buf = np.empty(pixels.num_used * block, np.float32)   # float32: half the cache traffic of the likelihood
    sums_buf = np.empty(nf * block, np.float32)
    like_buf = np.empty(nf * block)
    frames = np.arange(nf)
    if wanted is not None:             # the wanted pairs by block, then by frame
        w_frame, w_rot = wanted
        by_block = np.lexsort((w_frame, w_rot // block))
        w_frame, w_rot = w_frame[by_block], w_rot[by_block]
        w_starts = np.searchsorted(w_rot // block, np.arange(0, (nrot + block - 1) // block + 1))
    for r0 in range(0, nrot, block):
        r1 = min(r0 + block, nrot)
        n = r1 - r0
        logv = logv_buf[:pixels.num_used * n].reshape(pixels.num_used, n)
        t0 = perf_counter()
        views_by_rotation(flat, m, rotations.matrices[r0:r1], rotations.mode[r0:r1], q_t, corr, views[:n], u[r0:r1])
        if background is None:
            np.maximum(views[:n], np.float32(TINY), out=views[:n])
            np.log(views[:n], out=views[:n])             # numpy's SIMD logf
        logv[...] = views[:n].T                          # pixel-major for the likelihood's rows
        t1 = perf_counter()
        if wanted is not None:         # only the frames that want one of this block's rotations
            sel = slice(w_starts[r0 // block], w_starts[r0 // block + 1])
            frames, row = np.unique(w_frame[sel], return_inverse=True)
            allowed = np.zeros((len(frames), n), bool)
            allowed[row, w_rot[sel] - r0] = True
        k = len(frames)
        sums = sums_buf[:k * n].reshape(k, n)
        like = like_buf[:k * n].reshape(k, n)
        ptr, end, sub_scale = (shard.ptr, shard.used_end, scale) if wanted is None else \
            (shard.ptr[frames], shard.used_end[frames], scale[frames])
        if background is None:
            photon_log_likelihood(logv, ptr, end, shard.pixel, shard.count, sums)
        else:
            bgs = background[0] if wanted is None else background[0][frames]
            photon_log_likelihood_bg(logv, ptr, end, shard.pixel, shard.count, sub_scale, bgs, background[1],
                                     np.float32(TINY), sums)
        if wanted is None:
            count = keep_within_window(sums, log_prior[r0:r1], scale, u[r0:r1], r0, window, best, best_rot, like,
                                       offsets)
            write_kept(like, best, window, r0, offsets, frames, kept.reserve(count), *kept.arrays)
        else:
            sums[~allowed] = -np.inf
            sub_best, sub_rot, sub_window = best[frames], best_rot[frames], window[frames]
            offsets_k = offsets[:k + 1]
            count = keep_within_window(sums, log_prior[r0:r1], sub_scale, u[r0:r1], r0, sub_window, sub_best,
                                       sub_rot, like, offsets_k)
            write_kept(like, sub_best, sub_window, r0, offsets_k, frames, kept.reserve(count), *kept.arrays)
            best[frames], best_rot[frames] = sub_best, sub_rot
        clock["expand"] += t1 - t0
        clock["likelihood"] += perf_counter() - t1
    return (u, best, best_rot, *kept.result())


def default_threads() -> int:
    """The cores this process may run on (mpirun binds a rank to one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def random_model(size: int, pixels: PixelSet, rotations: Rotations, mean_counts: float, seed: int) -> np.ndarray:
    """Seeded uniform random start model (M, M, M) float64 -- (V, M, M, M) with modes, each volume its own
    draw -- scaled so a view holds ``mean_counts`` photons on average."""
    volumes = rotations.num_volumes
    model = np.random.default_rng(seed).random((volumes, size, size, size) if volumes > 1 else (size,) * 3)
    return model * view_level(model, pixels, rotations, particle_counts(mean_counts, pixels))


def particle_counts(mean_counts: float, pixels: PixelSet) -> float:
    """The frames' mean photons less the known background's (at its file's level, the background scales' start):
    what a view of the model must hold (all of them leveled a start 1.25x too bright with 600 background
    photons a frame beside 1500 of the particle's)."""
    return max(mean_counts - pixels.background_sum, 0.05 * mean_counts)


def leveled(model: np.ndarray, geometry, mean_counts: float, say: bool = True) -> np.ndarray:
    """A start model brought to the data's level (:func:`view_level`), said in the log when it changed."""
    factor = view_level(model, geometry.pixels, geometry.rotations, particle_counts(mean_counts, geometry.pixels))
    if say and abs(np.log10(factor)) > 0.05:
        logging.getLogger("spibatch").info("start model scaled by %.4g: its views now hold the frames' %.4g photons "
                                           "on average", factor, mean_counts)
    return model * factor


def view_level(model: np.ndarray, pixels: PixelSet, rotations: Rotations, mean_counts: float) -> float:
    """The factor that makes a view of ``model`` (its first volume, at 16 rotations spread over the grid) hold
    ``mean_counts`` photons on average: a start model's level (a truth in other units was 1e5 too bright, and
    with per-frame scaling the level error flipped to its inverse each iteration for ten of them)."""
    from spibatch.kernels.emc_cpu import views_by_rotation

    size = model.shape[-1]
    pick = np.arange(0, rotations.per_mode, max(1, rotations.per_mode // 16))   # rotations of volume 0
    views, u = np.empty((len(pick), pixels.num_used), np.float32), np.empty(len(pick))
    views_by_rotation(np.ascontiguousarray(model.reshape(-1)[:size ** 3], np.float32), size, rotations.matrices[pick],
                      np.zeros(len(pick), np.int32), np.ascontiguousarray(pixels.q[:pixels.num_used].T, np.float32),
                      pixels.corr[:pixels.num_used].astype(np.float32), views, u)
    level = float(u.mean())
    return mean_counts / level if level > 0 else 1.0


def warm_up(background: bool = False) -> None:
    """Compile (or load from Numba's disk cache) every kernel on a tiny problem, so later timings exclude it
    (``background``: the background kernels too)."""
    q = np.stack(np.meshgrid(np.arange(-3.0, 4.0), np.arange(-3.0, 4.0), [0.0], indexing="ij"), -1).reshape(-1, 3)
    detector = Detector(q, np.ones(len(q)), np.where(np.arange(len(q)) % 7 == 0, 1, 0).astype(np.uint8), 100.0, 100.0)
    pixels = PixelSet.from_detector(detector, background=np.full(len(q), 0.01) if background else None)
    rotations = Rotations.refined_600_cell(1)
    counts = np.random.default_rng(0).poisson(1.0, (3, len(q)))
    shard = Shard.from_photons(Photons.from_dense(counts), pixels)
    model = random_model(detector.model_size(), pixels, rotations, 10.0, 0)
    for beta in (1e-3, 10.0):   # dense and sparse merge paths
        shard_step(model, rotations, pixels, shard, StepState(1, np.full(3, beta), np.ones(3),
                                                              np.ones(3) if background else None))
