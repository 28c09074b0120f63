"""``recipe: auto`` -- phase retrieval that tunes itself on the data, without a truth.

What an expert does by hand with PyNX or cuphaser, done by the program:

- **A free set** (:func:`draw_free_set`): 5% of the measured voxels, in small islands (3^3 voxels,
  Friedel pairs together, none near the beam stop), are held out of the modulus constraint.  The
  *free error* of a density -- ``sqrt(sum_free (|F| - A)^2 / sum_free A^2)``, the amplitude-space
  form of the Poisson log-likelihood (sqrt(I) of Poisson counts has a constant variance) on data
  the fit never saw -- says how well it predicts what it was not fitted to.  Starts are ranked by
  it and the best are averaged (:func:`spibatch.phasing.multistart.merge`).
- **A few support schedules**: the start of schedule ``k`` (:func:`schedule`) shrink-wraps with the threshold
  ``THRESHOLDS[k % 3]`` (0.10, 0.05, 0.025 of the blurred maximum): tight supports suit objects
  with sharp edges and protein densities with their ringing, loose ones soft objects; and when
  ``(k // 3)`` is odd it begins in a tight first support (the autocorrelation above
  ``TIGHT_FIRST_SUPPORT`` of its maximum, smaller than the object), from which the support grows
  instead of shrinking from twice the object: a hollow object stays hollow where a beam stop hides
  the modes that could fill it.  Six schedules, by ``seed % 6`` (``(seed // 2) % 6`` where sharpened
  starts run, so that each kind meets all six).
- **Ranking** (:func:`spibatch.phasing.multistart.select`): the starts within 2x of the lowest free
  error, by free error times support voxels: of two densities that predict the free set about as
  well, the more compact one -- the compactness prior phase retrieval rests on, needed because a
  density filled in by the beam stop's unmeasured modes predicts the free set (all outside the beam
  stop) as well as the true one.
- **Sharpened starts** (:mod:`spibatch.phasing.sharpen`): the odd seeds phase the data with their radial
  fall-off partly undone (``sharpen`` x the Wilson sigma), and are blurred back; the merge keeps the kind,
  sharpened or not, whose best start predicts the free voxels of the measured amplitudes best.
- **Shrink-wrap** every ``period`` iterations with a blur that decreases exponentially from
  ``sigma`` to ``sigma_end`` voxels over the RAAR iterations (PyNX's ``smooth_width`` schedule).
- **RAAR** (beta 0.9; more robust than HIO to noise and to a loose support), then **ER**, whose
  iterate is kept where the free error is lowest (it stops improving, the iterate that predicted
  best is returned).
- **Guards**: a support update that explodes (above ``MAX_SUPPORT_FRACTION`` of the box) or collapses
  (below ``MIN_SUPPORT_VOXELS``) is refused (the start keeps its support: early, noisy iterates of a
  small box do that once); ``RUNAWAY_STRIKES`` in a row and the start stops there (on the CPU at once;
  in a GPU batch it is carried to the end) and is not merged; when every start did, the merge stops
  the run with that one line (:func:`spibatch.phasing.multistart.merge` raises RecipeError).

Hand-written recipes are untouched by all this: ``auto`` is the :class:`Auto` operator, written
``auto`` or ``Auto()`` in a recipe (optionally ``Auto(iterations=600, polish=200, period=20)``).
"""

from __future__ import annotations

import math

import numpy as np

from spibatch.errors import InputError
from spibatch.phasing.algebra import RecipeError, Step
from spibatch.phasing.measurement import Measurement, full_spectrum, independent_amplitudes
from spibatch.phasing.support import MIN_SUPPORT_VOXELS, gaussian_filter_1d, shrink_wrap, threshold_blurred

THRESHOLDS = (0.10, 0.05, 0.025)     # shrink-wrap thresholds (fraction of the blurred maximum), by schedule
FREE_FRACTION = 0.05                 # measured voxels held out
MIN_FREE_VOXELS = 200                # fewer and the free error is too noisy to rank by
MAX_SUPPORT_FRACTION = 0.5           # a support above half the box constrains nothing: exploded
TIGHT_FIRST_SUPPORT = 0.15           # odd (seed // 3) starts begin in the autocorrelation above this fraction
SHARPEN = 0.7                        # odd seeds phase data sharpened by this x the Wilson sigma (phasing.sharpen)
RUNAWAY_STRIKES = 3                  # support updates in a row that explode or collapse before a start stops
BLUR_PROJECTION = False              # True: shrink-wrap on the blur of P_M x from the iteration's own spectrum
                                     # (0.6 iteration instead of 1; supports run away early: BENCHMARKS.md)


def shell_radius_full(n: int) -> np.ndarray:
    k = np.fft.fftfreq(n) * n
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)


def draw_free_set(measurement: Measurement, fraction: float = FREE_FRACTION, *, seed: int = 0,
                  source: str | None = None) -> np.ndarray:
    """The free voxels: bool of the amplitude's shape (FFT order; the half spectrum for a real density).

    Islands of 3^3 voxels around random centres among the measured voxels outside the beam-stop
    region (radius below the first measured shell + 2, or below 5% of the edge), with their Friedel
    mates, until ``fraction`` of the measured voxels are free.  Deterministic (``seed``): every
    start and worker holds out the same voxels.  InputError (one line) when it cannot be drawn.
    """
    n = measurement.n
    measured = measurement.measured_full()
    radius = shell_radius_full(n)
    inner = float(radius[measured].min()) if measured.any() else 0.0
    candidates = measured & (radius >= max(inner + 2.0, 0.05 * n))
    available = int(np.count_nonzero(candidates))
    want = int(round(fraction * np.count_nonzero(measured)))
    if want < MIN_FREE_VOXELS or available < 2 * want:
        measured_count = int(np.count_nonzero(measured))
        why = (f"{fraction:.0%} of the {measured_count} measured voxels is {want}, fewer than the {MIN_FREE_VOXELS} "
               f"its free error needs (at least {int(np.ceil(MIN_FREE_VOXELS / fraction))} measured voxels)"
               if want < MIN_FREE_VOXELS else
               f"only {available} measured voxels lie outside the beam-stop region, fewer than twice the {want} "
               "it holds out")
        raise InputError(f"cannot draw a free set for recipe 'auto': {why}", path=source, field="phasing.recipe",
                         fix="give an intensity measured over more voxels, or write a recipe (e.g. "
                         "(HIO() ** 50 * ShrinkWrap()) ** 10 * ER() ** 100), which needs no free set")
    rng = np.random.default_rng(seed)
    inv = (-np.arange(n)) % n
    free = np.zeros((n, n, n), bool)
    where = np.flatnonzero(candidates)
    count = 0
    while count < want:
        centres = np.zeros(n ** 3, bool)
        centres[rng.choice(where, size=max(1, (want - count) // 40), replace=False)] = True
        centres = centres.reshape(n, n, n)
        grown = centres.copy()
        for axis in range(3):          # a 3^3 island around each centre (periodic)
            grown = grown | np.roll(grown, 1, axis) | np.roll(grown, -1, axis)
        free |= grown & candidates
        free |= free[np.ix_(inv, inv, inv)]
        count = int(np.count_nonzero(free))
    return np.ascontiguousarray(free[:, :, :n // 2 + 1]) if measurement.real else free


def check_free_set(measurement: Measurement, support_voxels: int, *, source: str | None = None) -> np.ndarray:
    """The free set, checked: with it held out there must still be more measured amplitudes than the first
    support's unknowns (else one InputError)."""
    free = draw_free_set(measurement, source=source)
    held = int(np.count_nonzero(free))
    if measurement.real:        # each Friedel pair once, as independent_amplitudes counts
        held = (int(np.count_nonzero(_full(free, measurement.n))) + 1) // 2
    known = independent_amplitudes(measurement) - held
    unknowns = support_voxels * (1 if measurement.real else 2)
    if known <= unknowns:
        raise InputError(f"with {held} measured amplitudes held out as the free set only {known} remain for the "
                         f"{unknowns} unknowns of the first support: recipe 'auto' cannot phase these data",
                         path=source, field="phasing.recipe",
                         fix="give an intensity measured over more voxels, or a hand-written recipe")
    return free


def _full(half: np.ndarray, n: int) -> np.ndarray:
    return full_spectrum(half, n)


def _iterate(rec, beta, blur=None):
    """One RAAR iteration with relaxation ``beta`` (ER when None), as the RAAR and ER operators run it.  With
    ``blur`` (a separable filter), also the blur of this iteration's P_M x, from the projected spectrum it
    computed anyway: returned in real space (the engine's ``y``), else None."""
    rec.algorithm = "ER" if beta is None else "RAAR"
    y = rec.modulus_projection(filtered=blur)
    if beta is None:
        rec.kernels.update_er(rec.x, y, rec.support, rec.positivity)
    else:
        rec.kernels.update_raar(rec.x, y, rec.support, rec.positivity, beta)
    rec.changed()
    if blur is None:
        return None
    rec.y_is_projection = False
    return rec.fft.inverse(rec.filtered_spectrum)


def check_data(recipe, measurement: Measurement, support: np.ndarray, source: str | None = None) -> None:
    """Every check the recipe's operators make of the data before a start runs (the free set of ``auto``)."""
    for op in _walk(recipe):
        if isinstance(op, Auto):
            op.check_data(measurement, support, source)
            return


def find_auto(recipe) -> Auto | None:
    """The recipe's :class:`Auto` step (the first), None when it has none."""
    return next((op for op in _walk(recipe) if isinstance(op, Auto)), None)


def _walk(op):
    yield op
    for child in getattr(op, "terms", ()):
        yield from _walk(child)
    if hasattr(op, "base"):
        yield from _walk(op.base)


def _tight_first_supports(rec, tight: list[bool]) -> None:
    """Starts marked ``tight`` begin inside the autocorrelation above ``TIGHT_FIRST_SUPPORT`` of its maximum
    (within the given first support): smaller than the object, so the shrink-wrap grows the support where the
    data ask for density instead of carving it out of twice the object -- a hollow object whose inside only
    the beam-stop hole's free modes could fill stays hollow."""
    if not any(tight):
        return
    from spibatch.phasing.measurement import autocorrelation_support

    xp = rec.xp
    small = xp.asarray(autocorrelation_support(rec.measurement, TIGHT_FIRST_SUPPORT))
    for b, flag in enumerate(tight):
        if not flag:
            continue
        support = rec.support[b] & small
        if int(support.sum()) < MIN_SUPPORT_VOXELS:
            continue
        rec.support[b] = support
        rec.x[b] = xp.where(support, rec.x[b], 0)
        rec.support_sizes[b][0] = (0, int(support.sum()))
    rec.changed()
    rec.y_is_projection = False


def schedule(seed: int, paired: bool = False) -> int:
    """Start ``seed``'s support schedule, 0 .. 5: threshold ``THRESHOLDS[k % 3]``, a tight first support when
    ``(k // 3) % 2``.  ``paired`` (sharpened starts run, on the odd seeds): ``seed // 2`` picks it, so that seeds
    2j and 2j + 1, one plain and one sharpened, share it and each kind meets every schedule."""
    return (seed // 2 if paired else seed) % (2 * len(THRESHOLDS))


def sigma_at(iteration: int, main: int, sigma: float, sigma_end: float) -> float:
    """The blur after ``iteration`` of ``main`` RAAR iterations: sigma -> sigma_end exponentially, then held."""
    t = min(1.0, iteration / max(main, 1))
    return sigma * math.exp(t * math.log(sigma_end / sigma))


class Auto(Step):
    """The self-tuning recipe (see the module notes): RAAR ``iterations`` with a shrink-wrap every ``period``
    (blur ``sigma`` -> ``sigma_end``, threshold by seed), then ``polish`` ER iterations keeping the iterate of
    lowest free error."""

    defaults = {"iterations": 600, "polish": 200, "period": 20, "beta": 0.9, "sigma": 2.0, "sigma_end": 1.5,
                "sharpen": SHARPEN}

    def check(self):
        for key in ("iterations", "polish", "period"):
            v = self.params[key]
            if not isinstance(v, int) or v < 0 or (key == "period" and v < 1):
                raise RecipeError(f"Auto: {key} must be a whole number {'>= 1' if key == 'period' else '>= 0'}, "
                                  f"not {v!r}")
        if self.params["iterations"] + self.params["polish"] == 0:
            raise RecipeError("Auto: iterations + polish must be > 0")
        self._beta()
        if not 0 < self.params["sigma_end"] <= self.params["sigma"] <= 100:
            raise RecipeError("Auto: need 0 < sigma_end <= sigma <= 100 voxels")
        sharpen = self.params["sharpen"]
        if isinstance(sharpen, bool) or not isinstance(sharpen, (int, float)) or not 0 <= sharpen <= 1.5:
            raise RecipeError(f"Auto: sharpen must be a number from 0 (no start sharpened) to 1.5, not {sharpen!r}")

    def __repr__(self) -> str:
        return "auto" if not self.given else super().__repr__()

    def iterations(self) -> int:
        return self.params["iterations"] + self.params["polish"]

    def steps(self) -> int:
        p = self.params
        return self.iterations() + (self.iterations() + p["period"] - 1) // p["period"]

    def check_data(self, measurement: Measurement, support: np.ndarray, source: str | None = None) -> None:
        """Before any start: the free set can be drawn and leaves enough measured amplitudes."""
        check_free_set(measurement, int(np.count_nonzero(support)), source=source)

    def apply(self, rec):
        p = self.params
        rec.hold_out(check_free_set(rec.measurement, int(rec.support_sizes[0][0][1])))
        schedules = [schedule(seed, rec.paired_seeds) for seed in rec.seeds]
        thresholds = [THRESHOLDS[k % len(THRESHOLDS)] for k in schedules]
        _tight_first_supports(rec, [(k // len(THRESHOLDS)) % 2 == 1 for k in schedules])
        beta = np.float32(p["beta"])
        main, polish, period = p["iterations"], p["polish"], p["period"]
        best = [math.inf] * rec.batch
        kept = rec.xp.zeros_like(rec.x)
        kept_support = rec.support.copy()
        failed = rec.failures
        strikes = [0] * rec.batch
        for done in range(main + polish):
            last = done + 1 == main + polish
            update = (done + 1) % period == 0 and not last
            relax = beta if done < main else None
            sigma = sigma_at(done + 1, main, p["sigma"], p["sigma_end"])
            before = rec.support.copy() if update else None
            if update and BLUR_PROJECTION:
                blurred = _iterate(rec, relax, gaussian_filter_1d(rec.n, sigma, rec.measurement.real))
                sizes = threshold_blurred(rec, blurred, thresholds)
            else:
                _iterate(rec, relax)
                sizes = shrink_wrap(rec, sigma, thresholds) if update else []
            runaways = Auto._runaways(rec, sizes) if update else {}
            for b in range(rec.batch if update else 0):
                strikes[b] = strikes[b] + 1 if b in runaways else 0
                if b in runaways:
                    rec.support[b] = before[b]         # the update is refused: the start keeps its last support
                if strikes[b] >= RUNAWAY_STRIKES and b not in failed:
                    failed[b] = runaways[b]            # and after RUNAWAY_STRIKES in a row it stops, not merged
            if len(failed) == rec.batch:
                break                                  # every start here ran away: stop now, not in an hour
            if done >= main and ((done + 1 - main) % period == 0 or last):
                density = rec.density()
                for b, err in enumerate(rec.free_errors(density)):
                    if err < best[b]:
                        best[b] = err
                        kept[b] = density[b]
                        kept_support[b] = rec.support[b]
        if polish and all(math.isfinite(v) for v in best):
            rec.x[...] = kept
            rec.support[...] = kept_support
            rec.changed()
            rec.y_is_projection = False
        return rec

    @staticmethod
    def _runaways(rec, sizes: list[int]) -> dict[int, str]:
        """{start index: one line} for each start whose new support exploded or collapsed."""
        box, out = rec.n ** 3, {}
        for b, size in enumerate(sizes):
            if size > MAX_SUPPORT_FRACTION * box:
                out[b] = (f"auto: the support of start {rec.seeds[b]} exploded to {size} voxels ({size / box:.0%} of "
                          f"the box) at iteration {rec.iteration}: the data do not confine the object (too few "
                          "measured voxels at low q?)")
            elif size < MIN_SUPPORT_VOXELS:
                out[b] = (f"auto: the support of start {rec.seeds[b]} collapsed to {size} voxels at iteration "
                          f"{rec.iteration}: the data hold no object the shrink-wrap can follow")
        return out
