"""The data types of an EMC iteration, shared by the CPU and GPU shard steps, the executors and the driver.

An iteration, for the frames of one shard and every sampled rotation ``r`` (matrix ``R_r``,
prior weight ``w_r``):

* expand: the view ``W_rt = model(R_r q_t)`` on the used pixels (mask 0), trilinear, and its
  sum ``u_r``;
* likelihood: ``L_dr = sum_t K_dt log W_rt - phi_d u_r + log w_r`` from the sparse photons
  ``K`` (ones and multi), ``phi_d`` the frame's scale;
* probabilities: ``P_dr ~ exp(beta_d (L_dr - max_r L_dr))`` over the rotations within
  ``PDIFF / beta_d`` of the best, normalised, then entries below ``PROB_MIN`` dropped
  (Dragonfly's pruning);
* maximize: photons of all frames, weighted by ``P``, merged into 3-D with the trilinear
  weights of their pixels (mask 0 and 1); the denominator merges ``sum_d P_dr phi_d`` with
  the same weights.

With a known background ``B_t`` (photons per frame, Dragonfly's ``background_file``) and a
per-frame background scale ``b_d``, a frame's expected photons are ``phi_d W_rt + b_d B_t``:
the likelihood is ``L_dr = sum_t K_dt log(phi_d W_rt + b_d B_t) - phi_d u_r + log w_r`` (the
``b_d sum_t B_t`` term is the same for every rotation), and the merge gives the model only each
photon's expected particle share ``K_dt phi_d W_rt / (phi_d W_rt + b_d B_t)`` -- what removes the
background's bias.  The per-frame ``particle_counts`` (that share summed over rotations, with ``P``,
on used pixels) then give the scales by one EM step each iteration: ``phi_d = particle_counts /
sum_r P u_r`` and ``b_d = (counts - particle_counts) / sum_t B_t``.

A shard step (:func:`spibatch.emc.step.shard_step` on the CPU,
:func:`spibatch.emc.gpu_step.gpu_shard_step` on a GPU) turns ``(model, Rotations, PixelSet,
Shard, StepState)`` into :class:`ShardSums`; the sums of shards add up (:func:`reduce`, or
one MPI Allreduce); :func:`finish` divides, updates the scales and computes the metrics.
A :class:`ShardSpec` names a shard's frames in a photons file, so a shard can be read (or
sent to a task) anywhere; :class:`Geometry` is the run's pixels and rotations with the
recipe (detector file, num_div) to rebuild them in another process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from spibatch.detector import MASK_EXCLUDED, MASK_USED, Detector
from spibatch.emc.rotations import quaternions, rotation_matrices
from spibatch.photons import Photons

if TYPE_CHECKING:
    from spibatch.emc.refine import Candidates

PDIFF = 14.0        # keep rotations within PDIFF / beta of the best log-likelihood
PROB_MIN = 1e-6     # then drop normalised probabilities below this
TINY = 1e-30        # floor of the view before its (float32) log


@dataclass
class Rotations:
    """The orientations EMC samples: quaternions (R, 4), matrices (R, 3, 3), prior weights (R,) summing to 1,
    and the model volume each one slices: ``mode`` (R,) int32.

    One mode: the refined 600-cell (``per_mode`` = R rotations, all of volume 0).  With modes (Dragonfly's
    ``num_modes`` and ``num_nonrot_modes``): each of ``rotating`` volumes is seen at every rotation of the
    600-cell (orientation ``k per_mode + r`` is rotation r of volume k), then each of ``nonrot`` "junk"
    volumes at the identity only (orientation ``rotating per_mode + j``): a frame is one conformation in
    some orientation, or a pattern that fits none (its prior is that of one rotation, 1 / per_mode).
    """

    quaternions: np.ndarray
    matrices: np.ndarray
    weights: np.ndarray
    mode: np.ndarray = None
    per_mode: int = 0
    num_volumes: int = 1

    def __post_init__(self):
        if self.mode is None:
            self.mode = np.zeros(len(self.weights), np.int32)
        self.per_mode = self.per_mode or len(self.weights)

    @classmethod
    def refined_600_cell(cls, num_div: int, num_modes: int = 1, nonrot_modes: int = 0) -> "Rotations":
        quats, weights = quaternions(num_div)
        if num_modes == 1 and nonrot_modes == 0:
            return cls(quats, rotation_matrices(quats), weights)
        r = len(weights)
        identity = np.tile([1.0, 0.0, 0.0, 0.0], (nonrot_modes, 1))
        quats = np.concatenate([np.tile(quats, (num_modes, 1)), identity])
        weights = np.concatenate([np.tile(weights, num_modes), np.full(nonrot_modes, 1.0 / r)])
        mode = np.concatenate([np.repeat(np.arange(num_modes), r), num_modes + np.arange(nonrot_modes)])
        return cls(quats, rotation_matrices(quats), weights / weights.sum(), mode.astype(np.int32), r,
                   num_modes + nonrot_modes)

    def __len__(self) -> int:
        return len(self.weights)

    def subset(self, index: np.ndarray) -> "Rotations":
        """Rotations ``index`` (R',) of these (one mode only), with their prior weights as they are (not
        renormalised: a frame's probabilities are normalised over what it searches)."""
        return Rotations(self.quaternions[index], self.matrices[index], self.weights[index], self.mode[index])


@dataclass
class PixelSet:
    """The detector's pixels as EMC uses them: used (mask 0) first, then merge-only (mask 1).

    q (T, 3) float64 in voxels; ``num_used`` leading rows are mask 0;
    ``index_of`` (num_pix,) int32 maps a detector pixel to its row, -1 for excluded;
    ``corr`` (T,) float64: the expected photons of a pixel are ``scale x corr x model(R q)`` --
    the detector's solid angle x polarization normalised to mean 1 over the pixels not excluded (Dragonfly's
    ``corr``), or ones (``detector_corr=False``);
    ``background`` (T,) float64 photons per frame of each row (a detector's known background), or None.
    """

    q: np.ndarray
    num_used: int
    index_of: np.ndarray
    corr: np.ndarray
    background: np.ndarray | None = None

    @property
    def background_sum(self) -> float:
        """The background's photons per frame on the used pixels (0 without one)."""
        return 0.0 if self.background is None else float(self.background[:self.num_used].sum())

    @classmethod
    def from_detector(cls, detector: Detector, detector_corr: bool = True,
                      background: np.ndarray | None = None) -> "PixelSet":
        """``background``: (num_pix,) photons per pixel per frame in the detector's pixel order, or None."""
        used = np.flatnonzero(detector.mask == MASK_USED)
        merge_only = np.flatnonzero((detector.mask != MASK_USED) & (detector.mask != MASK_EXCLUDED))
        order = np.concatenate([used, merge_only])
        index_of = np.full(detector.num_pix, -1, np.int32)
        index_of[order] = np.arange(len(order), dtype=np.int32)
        corr = np.ones(len(order))
        level = detector.corr[order].mean() if len(order) else 0.0   # over the pixels EMC reads: an excluded pixel's
        if detector_corr and level > 0:                               # corr (unchecked, unused) must not set it
            corr = np.ascontiguousarray(detector.corr[order] / level, np.float64)
        rows = None if background is None else np.ascontiguousarray(np.asarray(background, np.float64)[order])
        return cls(np.ascontiguousarray(detector.q_voxels[order], np.float64), len(used), index_of, corr, rows)


@dataclass
class Shard:
    """Photons of frames ``first_frame ..`` remapped to PixelSet rows, in one CSR form.

    ``ptr`` (D + 1,) int64, ``pixel`` (n,) int32, ``count`` (n,) float32 (exact integers; the
    kernels multiply in float64): each frame's photons on used and merge-only pixels, the used
    ones first (in file order), so the likelihood reads ``ptr[d] .. used_end[d]`` and the merge
    ``ptr[d] .. ptr[d + 1]`` of the same arrays (8 bytes per photon entry, one copy).  ``counts`` (D,) float64: photons per frame on used pixels;
    ``log_factorial`` (D,): sum of log K! over them (only for the reported log-likelihood).
    The by-pixel (CSC) form the dense merge kernel wants is built per call by :meth:`by_pixel`.
    """

    first_frame: int
    ptr: np.ndarray
    pixel: np.ndarray
    count: np.ndarray
    used_end: np.ndarray
    counts: np.ndarray
    log_factorial: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.counts)

    @property
    def num_entries(self) -> int:
        return len(self.pixel)

    @classmethod
    def from_photons(cls, photons: Photons, pixels: PixelSet, first_frame: int = 0) -> "Shard":
        from scipy.special import gammaln

        nf = photons.num_frames
        frame = np.concatenate([np.repeat(np.arange(nf), np.diff(photons.ones_indptr)),
                                np.repeat(np.arange(nf), np.diff(photons.multi_indptr))])
        pix = pixels.index_of[np.concatenate([photons.ones_index, photons.multi_index])]
        cnt = np.concatenate([np.ones(len(photons.ones_index)), photons.multi_count.astype(np.float64)])
        keep = pix >= 0
        frame, pix, cnt = frame[keep], pix[keep], cnt[keep]
        merge_only = pix >= pixels.num_used
        # by frame, used before merge-only, file order otherwise (stable): the likelihood sums run
        # over the same photons in the same order as a separate used-only CSR would give
        order = np.lexsort((merge_only, frame))
        frame, pix, cnt, merge_only = frame[order], pix[order], cnt[order], merge_only[order]
        ptr = np.zeros(nf + 1, np.int64)
        np.cumsum(np.bincount(frame, minlength=nf), out=ptr[1:])
        used = ~merge_only
        used_per_frame = np.bincount(frame[used], minlength=nf)
        counts = np.bincount(frame[used], weights=cnt[used], minlength=nf)
        log_factorial = np.bincount(frame[used], weights=gammaln(cnt[used] + 1), minlength=nf)
        if len(cnt) and cnt.max() >= 2 ** 24:
            raise ValueError(f"a pixel holds {int(cnt.max())} photons: more than float32 counts hold exactly")
        return cls(first_frame, ptr, pix.astype(np.int32), cnt.astype(np.float32), ptr[:-1] + used_per_frame,
                   counts, log_factorial)

    @classmethod
    def joined(cls, shards: list["Shard"]) -> "Shard":
        """One shard of ``shards`` whose frames follow each other (frames ``shards[0].first_frame ..``)."""
        for a, b in zip(shards, shards[1:]):
            if b.first_frame != a.first_frame + a.num_frames:
                raise ValueError(f"shards at frames {a.first_frame} and {b.first_frame} do not follow each other")
        offsets = np.cumsum([0] + [s.num_entries for s in shards])
        ptr = np.concatenate([shards[0].ptr[:1]] + [s.ptr[1:] + o for s, o in zip(shards, offsets)])
        return cls(shards[0].first_frame, ptr, np.concatenate([s.pixel for s in shards]),
                   np.concatenate([s.count for s in shards]),
                   np.concatenate([s.used_end + o for s, o in zip(shards, offsets)]),
                   np.concatenate([s.counts for s in shards]), np.concatenate([s.log_factorial for s in shards]))

    def by_pixel(self, num_pixels: int, f0: int = 0, f1: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The photons of frames ``f0 .. f1`` (default: all) by pixel (CSC): ``(pixel_ptr (T + 1,) int64,
        frame (n,) int32 counted from f0, count (n,) float32)``."""
        from spibatch.kernels.emc_cpu import group_by_key

        f1 = self.num_frames if f1 is None else f1
        a, b = int(self.ptr[f0]), int(self.ptr[f1])
        frame = np.repeat(np.arange(f1 - f0, dtype=np.int32), np.diff(self.ptr[f0:f1 + 1]))
        pixel_ptr, order = group_by_key(self.pixel[a:b], num_pixels)
        return pixel_ptr, frame[order], self.count[a:b][order]


@dataclass
class StepState:
    """What every shard needs to know about the iteration.

    beta: (D_total,) float64 per-frame annealing exponent; scales: (D_total,)
    float64 per-frame scale factors (ones when not fitted); background_scales: (D_total,) float64
    per-frame background scales ``b_d`` when the pixels carry a background, else None; candidates: None
    (every frame searches every rotation) or each frame's own (:class:`Candidates`, coarse-to-fine refinement); top: > 0 asks the step
    for each frame's ``top`` most probable rotations (``frames["top_rotations"]`` (D, top) int32, -1 padded).
    merge: "pooled" (each voxel: all views' weighted photons over all their weights, the EM update) or
    "per_rotation" (Dragonfly's: each rotation's mean view -- its photons over its weight summed over all
    frames -- then the rotations' views averaged with equal weights); rotation_factor: (R,) float64, the
    per-rotation merge's 1 / each rotation's weight over all frames (0 where none), summed by the executor
    from every shard's :func:`~spibatch.emc.step.shard_weights` before the merge (None: not yet, or pooled).
    """

    iteration: int
    beta: np.ndarray
    scales: np.ndarray
    background_scales: np.ndarray | None = None
    candidates: Candidates | None = None
    top: int = 0
    merge: str = "pooled"
    rotation_factor: np.ndarray | None = None


@dataclass
class ShardSums:
    """Partial sums of one or more shards; they add up across shards.

    numerator, denominator: (M, M, M) merge sums: float64, or float32 views straight from a CPU merge (every
    sum of several converts them as it adds).  Per frame (D,),
    in frame order from ``first_frame``: counts, scale_denominator
    (sum_r P u_r), log_likelihood (sum_r P (L - log K!)), mutual_info
    (sum_r P log(P / w_r)), best_rotation, best_probability, num_kept; with a background also
    particle_counts (sum_r P sum_t K_dt phi W_rt / (phi W_rt + b B_t) on used pixels).
    ``timings`` adds up the seconds spent in each phase.
    """

    first_frame: int
    numerator: np.ndarray
    denominator: np.ndarray
    frames: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)   # seconds: expand, likelihood, normalize, merge


class ShardSpec(NamedTuple):
    """Frames ``start .. stop`` of the photons file ``photons``, which are frames ``first_frame ..`` of the run."""

    photons: str
    start: int
    stop: int
    first_frame: int

    @property
    def num_frames(self) -> int:
        return self.stop - self.start

    @classmethod
    def cut(cls, photons: str | os.PathLike, start: int, stop: int, frames_per_shard: int,
            first_frame: int | None = None) -> list["ShardSpec"]:
        """Frames ``start .. stop`` of ``photons`` in shards of ``frames_per_shard`` (the last may be shorter),
        numbered in the run from ``first_frame`` (default: ``start``)."""
        first = start if first_frame is None else first_frame
        return [cls(os.fspath(photons), a, min(a + frames_per_shard, stop), first + a - start)
                for a in range(start, stop, frames_per_shard)]

    def load(self, pixels: PixelSet) -> Shard:
        """Read the frames and remap them to ``pixels``."""
        from spibatch.io.dragonfly import read_photons

        return Shard.from_photons(read_photons(self.photons, self.start, self.stop), pixels, self.first_frame)


class GeometrySpec(NamedTuple):
    """The recipe of a run's :class:`Geometry`, small enough to send to a task: the detector file, the
    600-cell refinement, whether the detector's corr enters the views, the modes, and the background file
    (photons per pixel per frame; None: no background)."""

    detector_path: str
    num_div: int
    detector_corr: bool = True
    num_modes: int = 1
    nonrot_modes: int = 0
    background_file: str | None = None

    def build(self, detector: Detector | None = None, background: np.ndarray | None = None) -> "Geometry":
        """The geometry (``detector``, ``background``: those already read from the spec's files, if any)."""
        if detector is None:
            detector = Detector.read(self.detector_path)
        if background is None and self.background_file is not None:
            from spibatch.io.background import read_background

            background = read_background(self.background_file, detector.num_pix, shape=detector.shape)
        return Geometry(self, PixelSet.from_detector(detector, self.detector_corr, background),
                        Rotations.refined_600_cell(self.num_div, self.num_modes, self.nonrot_modes))


@dataclass(frozen=True)
class Geometry:
    """A run's pixels and rotations, with the recipe (:class:`GeometrySpec`) that rebuilds them elsewhere."""

    spec: GeometrySpec
    pixels: PixelSet
    rotations: Rotations

    @classmethod
    def build(cls, detector_path: str | os.PathLike, num_div: int, detector: Detector | None = None,
              detector_corr: bool = True, num_modes: int = 1, nonrot_modes: int = 0,
              background_file: str | os.PathLike | None = None, background: np.ndarray | None = None) -> "Geometry":
        """From the detector file (or the ``detector`` already read from it), the 600-cell refinement and the
        background file (or the ``background`` already read from it)."""
        bg = None if background_file is None else os.fspath(background_file)
        return GeometrySpec(os.fspath(detector_path), num_div, detector_corr, num_modes, nonrot_modes,
                            bg).build(detector, background)


def reduce(parts: list[ShardSums]) -> ShardSums:
    """Sum the volumes and join the per-frame arrays of ``parts`` (any order) in frame order."""
    parts = sorted(parts, key=lambda p: p.first_frame)
    numerator = np.array(parts[0].numerator, np.float64)      # a copy, float64 (a CPU merge's are float32)
    denominator = np.array(parts[0].denominator, np.float64)
    for p in parts[1:]:
        numerator += p.numerator
        denominator += p.denominator
    frames = {k: np.concatenate([p.frames[k] for p in parts]) for k in parts[0].frames}
    timings = {k: sum(p.timings.get(k, 0.0) for p in parts) for k in parts[0].timings}
    return ShardSums(parts[0].first_frame, numerator, denominator, frames, timings)


def finish(total: ShardSums, model: np.ndarray, need_scaling: bool, friedel: bool = False,
           background_sum: float = 0.0, fit_background: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """New model, new per-frame scales and the iteration's metrics from the reduced sums (whose volumes it
    overwrites: the new model is the numerator's array).

    Voxels no pixel reached keep weight 0 and become 0.  With ``need_scaling``
    the scales become ``counts / sum_r P u_r`` and model and scales are
    renormalised so that the mean scale is 1.  With ``friedel`` the sums of ``q`` and ``-q`` are added
    before the division (as Dragonfly does): the weighted mean of both sides, exactly centrosymmetric.
    With a background (``particle_counts`` among the frames' sums; ``background_sum``: its photons per frame on
    used pixels) the scales come from each frame's particle photons, and (``fit_background``) the background
    scales ``(counts - particle_counts) / background_sum`` join the frames' sums as ``background_scale``.
    """
    from spibatch.kernels.emc_cpu import add_friedel_mates, change_and_power, divide_where_weighted

    # in place in total's volumes, no temporary volume: a fresh 211^3 float64 array costs ~0.2 s of page faults
    num = np.ascontiguousarray(total.numerator, np.float64)  # (M, M, M), or (V, M, M, M) with modes
    den = np.ascontiguousarray(total.denominator, np.float64)
    m3 = num.shape[-1] ** 3
    if friedel:
        for flat in (num.reshape(-1, m3), den.reshape(-1, m3)):
            for volume in flat:
                add_friedel_mates(volume)
    new = num                                           # num / den where den > 0, 0 where no pixel reached
    divide_where_weighted(new.reshape(-1), den.reshape(-1))
    f = total.frames
    scales = np.ones(len(f["counts"]))
    particle = f.get("particle_counts")
    if particle is not None and fit_background and background_sum > 0:
        # the file's level is the frames' mean: a model component shaped like the background in every view
        # would otherwise trade places with the scales' common part
        background_scale = np.maximum(f["counts"] - particle, 0.0) / background_sum
        level = background_scale.mean() if len(background_scale) else 1.0
        f["background_scale"] = background_scale / level if level > 0 else np.ones_like(background_scale)
    if need_scaling:
        ok = f["scale_denominator"] > 0
        scales[ok] = (f["counts"] if particle is None else particle)[ok] / f["scale_denominator"][ok]
        mean = scales[ok].mean() if ok.any() else 1.0
        scales /= mean
        new *= mean
    change, power = change_and_power(new.reshape(-1), np.ascontiguousarray(model, np.float64).reshape(-1))
    metrics = {
        "rms_change": float(np.sqrt(change / new.size)),
        "model_rms": float(np.sqrt(power / new.size)),
        "mutual_info": float(f["mutual_info"].mean()),
        "log_likelihood": float(f["log_likelihood"].mean()),
        "mean_kept_rotations": float(f["num_kept"].mean()),
    }
    return new, scales, metrics
