"""2-D classification of sparse frames before EMC: which frames are hits of the particle, which are not.

What Dragonfly users do in its classifier before EMC, unsupervised: frames of another particle, weak frames and
frames of a radial background alone (water, ice, gas) fall into classes of their own, and the classes the user
keeps become a blacklist (``emc.blacklist_file``, :mod:`spibatch.io.frame_selection`).

Per frame, features that do not depend on its orientation, from the photons alone (the sparse rows are never made
dense):

* log10 of its photons;
* its radial profile: the fraction of its photons in each of ``num_shells`` shells of ``|q|``, square-rooted
  (Poisson noise then about the same in every shell);
* speckle contrast per band of shells: sum n (n - 1) / corr against the expectation of a smooth pattern (0 for a
  radial background, about 1 for one particle's speckle);
* angular power per band: ``|sum (n / corr) exp(i m phi)|^2``, the Poisson bias removed, over the band's photons
  squared, for even m = 2, 4, ... (the speckle's angular size; odd m vanish by Friedel's law).

The features are standardised, projected on their leading principal components and clustered by a Gaussian
mixture (full covariances, k-means++ starts, a few restarts, EM on a random subset of at most ``max_fit`` frames,
then every frame assigned).  Classes are numbered by size, 0 the largest.  The suggestion of which to keep: the
largest class, and the classes whose mean profile and contrast lie within ``max_distance`` (2) of its spread and
whose median photons are more than 0.3 times its own (not weak frames).  It is a suggestion: look at the classes (``spibatch classify``'s
``classes.png``) before EMC.  Two particles' double hits stay with the single hits (their profiles are alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from spibatch.detector import MASK_EXCLUDED
from spibatch.errors import InputError

FEATURES = ("counts", "profile", "contrast", "angular")


@dataclass(frozen=True)
class PixelTables:
    """Per-pixel lookups of a detector: ``shell`` (num_pix,) int (-1: a pixel not used: excluded, or outside the
    circle of used pixels), ``band`` (S,) int of each shell, ``inv_corr`` (num_pix,) 1 / corr (0 where not used),
    ``cos`` / ``sin`` (num_pix, H) of m phi for m = 2, 4, ..., 2H, ``weight`` (S,) the shells' summed corr and
    ``edges`` (S + 1,) the shells' edges in ``|q|`` voxels."""

    shell: np.ndarray
    band: np.ndarray
    inv_corr: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    weight: np.ndarray
    edges: np.ndarray

    @classmethod
    def of(cls, detector, num_shells: int = 24, num_bands: int = 4, num_harmonics: int = 6) -> "PixelTables":
        q = np.asarray(detector.q_voxels, np.float64)
        r = np.linalg.norm(q, axis=1)
        used = (detector.mask != MASK_EXCLUDED) & (detector.corr > 0)
        merged = used & (detector.mask == 0)
        if merged.any():     # the full circle only: the corners would weigh the outer shells by the frame's shape
            used &= r <= r[merged].max()
        if not used.any():
            raise InputError("no pixel is used: every pixel is excluded or has corr 0", field="corr",
                             fix="give corr > 0 (the solid angle x polarisation) to the pixels that measure")
        edges = np.linspace(r[used].min(), r[used].max() + 1e-9, num_shells + 1)
        shell = np.where(used, np.clip(np.searchsorted(edges, r, side="right") - 1, 0, num_shells - 1), -1)
        weight = np.bincount(shell[used], weights=detector.corr[used], minlength=num_shells)
        if (weight <= 0).any():   # a shell of no pixel: its features would divide by 0 (NaN in classes.json)
            raise InputError(f"its {int(used.sum())} pixel(s) used (not excluded, corr > 0) leave "
                             f"{int((weight <= 0).sum())} of the {num_shells} shells of the classification empty",
                             field="corr", fix="check the detector's corr and mask")
        phi = np.arctan2(q[:, 1], q[:, 0])
        m = 2 * np.arange(1, num_harmonics + 1)
        return cls(shell, np.arange(num_shells) * num_bands // num_shells,
                   np.where(used, 1.0 / np.where(used, detector.corr, 1.0), 0.0), np.cos(np.outer(phi, m)),
                   np.sin(np.outer(phi, m)), weight, edges)


def frame_features(blocks: Iterable, tables: PixelTables) -> dict[str, np.ndarray]:
    """Features of every frame of ``blocks`` (:class:`spibatch.photons.Photons`, in order): ``counts`` (D,)
    photons on the pixels used, ``profile`` (D, S) photons per shell, ``contrast`` (D, B) speckle contrast per
    band, ``angular`` (D, B, H) angular power per band and harmonic."""
    num_shells, bands = len(tables.weight), int(tables.band.max()) + 1
    out: dict[str, list] = {name: [] for name in ("counts", "profile", "pairs", "smooth", "angular")}
    for block in (piece for whole in blocks for piece in _pieces(whole)):
        n = block.num_frames
        frame = np.concatenate([np.repeat(np.arange(n), np.diff(block.ones_indptr)),
                                np.repeat(np.arange(n), np.diff(block.multi_indptr))])
        pixel = np.concatenate([block.ones_index, block.multi_index])
        count = np.concatenate([np.ones(len(block.ones_index)), block.multi_count.astype(np.float64)])
        shell = tables.shell[pixel]
        on = shell >= 0
        frame, pixel, count, shell = frame[on], pixel[on], count[on], shell[on]
        w = tables.inv_corr[pixel]
        fs = frame * num_shells + shell
        shells = np.bincount(fs, weights=count, minlength=n * num_shells).reshape(n, num_shells)
        pairs = np.bincount(fs, weights=count * (count - 1) * w, minlength=n * num_shells).reshape(n, num_shells)
        smooth = shells * np.maximum(shells - 1, 0) / tables.weight        # n(n-1)/corr of a smooth pattern
        out["pairs"].append(np.stack([pairs[:, tables.band == b].sum(1) for b in range(bands)], axis=1))
        out["smooth"].append(np.stack([smooth[:, tables.band == b].sum(1) for b in range(bands)], axis=1))
        fb = frame * bands + tables.band[shell]
        wc = w * count
        total = np.bincount(fb, weights=wc, minlength=n * bands)
        bias = np.bincount(fb, weights=w * wc, minlength=n * bands)
        norm = np.maximum(total ** 2 - bias, 1.0)
        angular = np.empty((n * bands, tables.cos.shape[1]))
        for h in range(tables.cos.shape[1]):
            re = np.bincount(fb, weights=wc * tables.cos[pixel, h], minlength=n * bands)
            im = np.bincount(fb, weights=wc * tables.sin[pixel, h], minlength=n * bands)
            angular[:, h] = (re ** 2 + im ** 2 - bias) / norm
        out["counts"].append(shells.sum(1))
        out["profile"].append(shells)
        out["angular"].append(angular.reshape(n, bands, -1))
    found = {name: np.concatenate(parts) for name, parts in out.items()}
    pairs, smooth = found.pop("pairs"), found.pop("smooth")
    prior = 0.05 * smooth.mean(0)       # over every frame (not a block's): weak bands shrink towards 0, not -1
    below = smooth + prior              # 0 in a band where no frame has two photons in one shell: contrast 0
    found["contrast"] = np.divide(pairs + prior, below, out=np.ones_like(below), where=below > 0) - 1.0
    return found


def _pieces(block, entries: int = 1 << 20):
    """``block`` in pieces of whole frames holding about ``entries`` pixel entries each (at least one frame): the
    features' temporaries, ~100 bytes an entry, stay near 100 MB whatever the frames' photons."""
    per_frame = np.diff(block.ones_indptr) + np.diff(block.multi_indptr)
    ends = np.searchsorted(np.cumsum(per_frame), np.arange(entries, per_frame.sum(), entries), side="right")
    edges = np.unique(np.concatenate([[0], ends, [block.num_frames]]))
    return [block.select(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a] or [block]


def feature_matrix(features: dict[str, np.ndarray]) -> np.ndarray:
    """(D, F) the features, each column standardised (mean 0, standard deviation 1)."""
    n = np.maximum(features["counts"], 1.0)
    x = np.concatenate([np.log10(n)[:, None], np.sqrt(features["profile"] / n[:, None]),
                        np.clip(features["contrast"], -1, 5),
                        np.clip(features["angular"].reshape(len(n), -1), -0.2, 1.0)], axis=1)
    return (x - x.mean(0)) / (x.std(0) + 1e-12)


def principal_components(x: np.ndarray, num: int) -> np.ndarray:
    """(D, num) scores of ``x`` (D, F) on its leading principal components (from at most ~20 000 rows)."""
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x[::max(1, len(x) // 20000)], full_matrices=False)
    return x @ vt[:num].T


def _seeds(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds (k, dim) among the rows of ``x``."""
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    return np.array(centres)


def _log_weighted(x: np.ndarray, weights, means, chols) -> np.ndarray:
    """(D, k) log(weight x normal density) of each row for each component, up to one constant."""
    out = np.empty((len(x), len(weights)))
    for j in range(len(weights)):
        z = np.linalg.solve(chols[j], (x - means[j]).T)
        out[:, j] = np.log(weights[j]) - 0.5 * (z ** 2).sum(0) - np.log(np.diag(chols[j])).sum()
    return out


def mixture(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 200, reg: float = 1e-3):
    """A Gaussian mixture of ``k`` full-covariance components fitted to the rows of ``x`` (D, dim) by EM from
    k-means++ seeds: ((weights, means, Cholesky factors), mean log-likelihood per row)."""
    d, dim = x.shape
    means = _seeds(x, k, rng)
    resp = np.eye(k)[((x[:, None] - means[None]) ** 2).sum(-1).argmin(1)]
    previous = -np.inf
    for _ in range(iterations):
        nk = resp.sum(0) + 1e-9
        weights, means = nk / d, (resp.T @ x) / nk[:, None]
        chols = [np.linalg.cholesky((resp[:, j, None] * (x - means[j])).T @ (x - means[j]) / nk[j] + reg * np.eye(dim))
                 for j in range(k)]
        logp = _log_weighted(x, weights, means, chols)
        top = logp.max(1, keepdims=True)
        ll = top[:, 0] + np.log(np.exp(logp - top).sum(1))
        resp = np.exp(logp - ll[:, None])
        if ll.mean() - previous < 1e-6:
            break
        previous = ll.mean()
    return (weights, means, chols), float(ll.mean())


@dataclass
class Classes:
    """Each frame's class ``labels`` (D,) int (0 the largest class), the ``features`` they came from, their 2-D
    map ``scores`` (D, 2) (the first two principal components) and one summary a class (:func:`summarise`)."""

    labels: np.ndarray
    features: dict[str, np.ndarray]
    scores: np.ndarray
    summaries: list[dict]

    @property
    def suggested(self) -> list[int]:
        return [c for c, s in enumerate(self.summaries) if s["suggested"]]


def classify(blocks: Iterable, detector, num_classes: int = 5, seed: int = 0, num_components: int = 10,
             restarts: int = 4, max_fit: int = 5000, tables: PixelTables | None = None) -> Classes:
    """Classify the frames of ``blocks`` (Photons in order, on ``detector``) into ``num_classes`` classes
    (``tables``: the detector's :class:`PixelTables`, when the caller has already built them to check it)."""
    tables = PixelTables.of(detector) if tables is None else tables
    features = frame_features(blocks, tables)
    x = principal_components(feature_matrix(features), num_components)
    rng = np.random.default_rng(seed)
    fit = x[rng.permutation(len(x))[:max_fit]]
    best = max((mixture(fit, num_classes, rng) for _ in range(restarts)), key=lambda r: r[1])[0]
    raw = _log_weighted(x, *best).argmax(1)
    order = np.argsort(-np.bincount(raw, minlength=num_classes), kind="stable")
    labels = np.argsort(order)[raw]
    return Classes(labels, features, x[:, :2], summarise(labels, features, tables, num_classes))


def summarise(labels: np.ndarray, features: dict, tables: PixelTables, num_classes: int,
              max_distance: float = 2.0, min_ratio: float = 0.3) -> list[dict]:
    """One dict a class: ``frames``, ``median_photons``, ``profile`` (S,) mean photons per unit corr in each shell
    over the frame's photons, ``contrast`` (B,), ``distance`` (rms over the square-rooted profile and the contrast
    of (its mean - the largest class's) / the largest class's spread) and ``suggested`` (kept by the rule of the
    module docstring; its thresholds were set on simulated mixtures and on the two shared sets, whose frames are all
    one particle's and are all kept, BENCHMARKS.md)."""
    n = np.maximum(features["counts"], 1.0)
    shape = np.concatenate([np.sqrt(features["profile"] / n[:, None]), np.clip(features["contrast"], -1, 5)], axis=1)
    largest = labels == 0
    mean0, spread0, photons0 = shape[largest].mean(0), shape[largest].std(0), np.median(n[largest])
    varies = spread0 > 1e-6 * (1 + np.abs(mean0))      # a feature constant over the largest class measures nothing
    mean0, spread0, shape = mean0[varies], spread0[varies], shape[:, varies]
    out = []
    for c in range(num_classes):
        mine = labels == c
        if not mine.any():
            out.append({"frames": 0, "median_photons": 0.0, "distance": None, "suggested": False})
            continue
        distance = float(np.sqrt((((shape[mine].mean(0) - mean0) / spread0) ** 2).mean())) if varies.any() else 0.0
        median = float(np.median(n[mine]))
        out.append({"frames": int(mine.sum()), "median_photons": median, "distance": distance,
                    "profile": ((features["profile"][mine] / n[mine, None]).mean(0) / tables.weight).tolist(),
                    "contrast": features["contrast"][mine].mean(0).tolist(),
                    "suggested": bool(distance < max_distance and median > min_ratio * photons0)})
    return out
