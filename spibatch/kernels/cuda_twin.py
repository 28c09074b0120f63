"""A numpy stand-in for the CUDA kernels, to run the GPU orchestration on a machine without a GPU.

:class:`TwinRuntime` plugs into :class:`~spibatch.kernels.cuda_launch.Launcher` in place of
CuPy / PyCUDA.  Each kernel of ``cuda/emc.cu`` and ``cuda/phasing.cu`` has one function
here with the C signature's argument list, computing what the kernel's comment says
(in numpy, float32 where the kernel stores float32).  Before computing, it checks what the
CUDA code relies on: every array argument is C-contiguous (a pointer), and the grid and block
cover the kernel's index space (``grid.x * block.x >= rotations``, ``grid.y >= rows``,
one block per frame, blocks a multiple of 32 for the warp reductions).

What this tests: the GPU code paths in Python (buffers, chunking, block sizes, argument
order, pruning, batching), end to end against the CPU path.  What it does NOT test: the
CUDA C itself (nvcc compiles it in tests/test_cuda_sources.py; only a GPU runs it).
"""

from __future__ import annotations

import numpy as np


class TwinRuntime:
    """``launch(name, grid, block, args)`` runs the numpy twin of kernel ``name``; ``calls`` counts launches."""

    xp = np    # the array module the orchestration uses with this runtime

    def __init__(self):
        self.calls: dict[str, int] = {}

    def launch(self, name: str, grid: tuple, block: tuple, args: tuple) -> None:
        fn = KERNELS.get(name)
        if fn is None:
            raise KeyError(f"no numpy twin for kernel {name!r}")
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray) and a.ndim > 0 and not a.flags.c_contiguous:
                raise ValueError(f"{name}: argument {i} is not C-contiguous (a kernel sees a bare pointer)")
        if block[0] % 32 or block[0] * block[1] * block[2] > 1024:
            raise ValueError(f"{name}: block {block} must be a multiple of 32 threads, at most 1024")
        self.calls[name] = self.calls.get(name, 0) + 1
        fn(grid, block, *args)


def _covers(name: str, grid, block, columns: int, rows: int) -> None:
    """A 2-D launch (x over rotations, y over rows) must reach every (row, column)."""
    if grid[0] * block[0] < columns or grid[1] < rows:
        raise ValueError(f"{name}: grid {grid} x block {block} does not cover {rows} rows x {columns} columns")


def _trilinear(m: int, rotmats, nrot: int, q, npix: int):
    """Corner indices (T, R, 3) int64, fractions (T, R, 3) float32 and inside (T, R), as ``corner()`` in emc.cu."""
    c = np.float32(0.5 * (m - 1))
    rot = rotmats.reshape(nrot, 3, 3).astype(np.float32)
    pos = np.einsum("rij,tj->tri", rot, q.reshape(npix, 3).astype(np.float32)).astype(np.float32) + c
    index = np.floor(pos).astype(np.int64)
    frac = (pos - index).astype(np.float32)
    inside = np.all((index >= 0) & (index < m - 1), axis=-1)
    return index, frac, inside


def _corners(index, frac):
    """The 8 (flat offset steps, weight) pairs of the trilinear stencil."""
    for a in (0, 1):
        for b in (0, 1):
            for e in (0, 1):
                w = ((frac[..., 0] if a else 1 - frac[..., 0]) * (frac[..., 1] if b else 1 - frac[..., 1])
                     * (frac[..., 2] if e else 1 - frac[..., 2]))
                yield (a, b, e), w.astype(np.float32)


# ------------------------------------------------------------------ emc.cu

def _views(name, grid, block, model, m, rotmats, mode, nrot, q, pixel_factor, npix, view_sum):
    """(T, R) float32 trilinear views times pixel_factor, as ``view_at()`` in emc.cu; view_sum += their sums."""
    _covers(name, grid, block, nrot, npix)
    m = int(m)
    index, frac, inside = _trilinear(m, rotmats, int(nrot), q, int(npix))
    flat = model.reshape(-1)
    base = mode[:nrot].astype(np.int64)[None, :] * m ** 3                 # each rotation's volume
    v = np.zeros(inside.shape, np.float32)
    safe = np.where(inside[..., None], index, 0)
    for (a, b, e), w in _corners(index, frac):
        v += w * flat[base + ((safe[..., 0] + a) * m + safe[..., 1] + b) * m + safe[..., 2] + e]
    v[~inside] = 0.0
    v *= pixel_factor[:npix, None]
    view_sum[:nrot] += v.sum(axis=0, dtype=np.float64)
    return v


def log_views(grid, block, model, m, rotmats, mode, nrot, q, pixel_factor, npix, tiny, out, view_sum):
    nrot, npix = int(nrot), int(npix)
    v = _views("log_views", grid, block, model, m, rotmats, mode, nrot, q, pixel_factor, npix, view_sum)
    out.reshape(npix, nrot)[...] = np.log(np.maximum(v, np.float32(tiny)))


def views(grid, block, model, m, rotmats, mode, nrot, q, pixel_factor, npix, out, view_sum):
    nrot, npix = int(nrot), int(npix)
    out.reshape(npix, nrot)[...] = _views("views", grid, block, model, m, rotmats, mode, nrot, q, pixel_factor, npix,
                                          view_sum)


def photon_log_likelihood(grid, block, log_views, nrot, frame_ptr, frame_end, pixel, count, log_prior, scale,
                          view_sum, nframes, out):
    import scipy.sparse

    nrot, nframes = int(nrot), int(nframes)
    _covers("photon_log_likelihood", grid, block, nrot, nframes)
    npix = log_views.size // nrot
    lengths = frame_end[:nframes] - frame_ptr[:nframes]
    rows = np.repeat(np.arange(nframes), lengths)
    entries = np.concatenate([np.arange(a, b) for a, b in zip(frame_ptr[:nframes], frame_end[:nframes])] or [[]])
    entries = entries.astype(np.int64)
    photons = scipy.sparse.csr_matrix((count[entries].astype(np.float64), (rows, pixel[entries])),
                                      shape=(nframes, npix))
    acc = (log_prior[None, :nrot] - scale[:nframes, None] * view_sum[None, :nrot]
           + photons @ log_views.reshape(npix, nrot).astype(np.float64))
    out.reshape(nframes, nrot)[...] = acc.astype(np.float32)


def normalize_probabilities(grid, block, like, nrot, beta, window, prob_min, prob, best_out, norm_out):
    nrot = int(nrot)
    nframes = grid[0]
    if grid[1] != 1 or like.size != nframes * nrot:
        raise ValueError(f"normalize_probabilities: one block per frame, grid {grid} for {like.size // nrot} frames")
    rows = like.reshape(nframes, nrot).astype(np.float64)
    best = np.maximum(rows.max(axis=1), -1e300)   # the kernel's start: a row of -inf keeps nothing
    cut = best - float(window) / beta[:nframes]
    kept = rows > cut[:, None]
    weights = np.where(kept, np.exp(beta[:nframes, None] * (rows - best[:, None])), 0.0)
    norm = weights.sum(axis=1)
    p = np.divide(weights, norm[:, None], out=np.zeros_like(weights), where=norm[:, None] > 0)   # none kept: 0
    prob.reshape(nframes, nrot)[...] = np.where(p >= float(prob_min), p, 0.0).astype(np.float32)
    best_out[:nframes] = best
    norm_out[:nframes] = norm


def weighted_photons(grid, block, prob, nrot, pixel_ptr, frame, count, npix, out):
    import scipy.sparse

    nrot, npix = int(nrot), int(npix)
    _covers("weighted_photons", grid, block, nrot, npix)
    nframes = prob.size // nrot
    first, last = int(pixel_ptr[0]), int(pixel_ptr[npix])      # offsets into frame / count, as in the kernel
    photons = scipy.sparse.csr_matrix((count[first:last].astype(np.float64), frame[first:last],
                                       pixel_ptr[:npix + 1] - first), shape=(npix, nframes))
    out.reshape(npix, nrot)[...] = (photons @ prob.reshape(nframes, nrot).astype(np.float64)).astype(np.float32)


def merge_views(grid, block, acc, m, rotmats, mode, nrot, q, npix, views, weight_of_rot):
    m, nrot, npix = int(m), int(nrot), int(npix)
    _covers("merge_views", grid, block, nrot, npix)
    index, frac, inside = _trilinear(m, rotmats, nrot, q, npix)
    w_rot = weight_of_rot[:nrot]
    use = inside & (w_rot != 0)[None, :]
    t, r = np.nonzero(use)
    index, frac = index[t, r], frac[t, r]
    v = views.reshape(npix, nrot)[t, r]
    flat = acc.reshape(-1)
    size = flat.size // 2
    for (a, b, e), w in _corners(index, frac):
        voxel = mode[r].astype(np.int64) * m ** 3 + ((index[:, 0] + a) * m + index[:, 1] + b) * m + index[:, 2] + e
        flat[0::2] += np.bincount(voxel, w * v, minlength=size).astype(np.float32)
        flat[1::2] += np.bincount(voxel, w * w_rot[r], minlength=size).astype(np.float32)


# ------------------------------------------------------------------ emc.cu, with a known background

def _frame_entries(frame_ptr, frame_end, nframes: int):
    """(frame of each entry, entry index) over entries frame_ptr[d] .. frame_end[d] of frames 0 .. nframes."""
    lengths = (frame_end[:nframes] - frame_ptr[:nframes]).astype(np.int64)
    rows = np.repeat(np.arange(nframes), lengths)
    entries = np.concatenate([np.arange(a, b) for a, b in zip(frame_ptr[:nframes], frame_end[:nframes])] or [[]])
    return rows, entries.astype(np.int64)


def _sum_rows(rows, terms, nrows: int) -> np.ndarray:
    """(nrows, R) float64: the rows of ``terms`` (n, R) added up by ``rows`` (n,)."""
    import scipy.sparse

    n = len(rows)
    group = scipy.sparse.csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(nrows, n))
    return np.asarray(group @ terms.astype(np.float64))


def _particle_share(v, scale, background_scale, background, tiny):
    """Per entry (n,) and rotation (R,): s V / max(s V + b B, tiny) and the expected photons (float32)."""
    w = scale.astype(np.float32)[:, None] * v
    expected = np.maximum(w + (background_scale.astype(np.float32) * background)[:, None], np.float32(tiny))
    return w, expected


def photon_log_likelihood_bg(grid, block, views, nrot, frame_ptr, frame_end, pixel, count, log_prior, scale,
                             background_scale, background, view_sum, nframes, tiny, out):
    nrot, nframes = int(nrot), int(nframes)
    _covers("photon_log_likelihood_bg", grid, block, nrot, nframes)
    rows, entries = _frame_entries(frame_ptr, frame_end, nframes)
    t = pixel[entries]
    _, expected = _particle_share(views.reshape(-1, nrot)[t], scale[rows], background_scale[rows], background[t],
                                  tiny)
    terms = count[entries].astype(np.float64)[:, None] * np.log(expected).astype(np.float64)
    acc = log_prior[None, :nrot] - scale[:nframes, None] * view_sum[None, :nrot] + _sum_rows(rows, terms, nframes)
    out.reshape(nframes, nrot)[...] = acc.astype(np.float32)


def weighted_photons_bg(grid, block, prob, nrot, pixel_ptr, frame, count, views, scale, background_scale, background,
                        npix, tiny, out):
    nrot, npix = int(nrot), int(npix)
    _covers("weighted_photons_bg", grid, block, nrot, npix)
    first, last = int(pixel_ptr[0]), int(pixel_ptr[npix])      # offsets into frame / count, as in the kernel
    t = np.repeat(np.arange(npix), np.diff(pixel_ptr[:npix + 1]))
    d = frame[first:last]
    w, expected = _particle_share(views.reshape(npix, nrot)[t], scale[d], background_scale[d], background[t], tiny)
    terms = count[first:last, None] * prob.reshape(-1, nrot)[d] * w / expected
    out.reshape(npix, nrot)[...] = _sum_rows(t, terms, npix).astype(np.float32)


def particle_photons(grid, block, prob, nrot, frame_ptr, frame_end, pixel, count, views, scale, background_scale,
                     background, nframes, tiny, out):
    nrot, nframes = int(nrot), int(nframes)
    _covers("particle_photons", grid, block, nrot, nframes)
    rows, entries = _frame_entries(frame_ptr, frame_end, nframes)
    t = pixel[entries]
    w, expected = _particle_share(views.reshape(-1, nrot)[t], scale[rows], background_scale[rows], background[t],
                                  tiny)
    share = _sum_rows(rows, count[entries, None] * w / expected, nframes)
    out[:nframes] += (prob.reshape(nframes, nrot).astype(np.float64) * share).sum(axis=1)


# ------------------------------------------------------------------ phasing.cu

def modulus_project(grid, block, spectrum, amplitude, scale, size, k_len, n, half, sums):
    size, k_len, n = int(size), int(k_len), int(n)
    f = spectrum.reshape(-1)[:size]
    a = amplitude.reshape(-1)[:size]
    k = np.arange(size) % k_len
    w = np.where(bool(half) & (k != 0) & (2 * k != n), 2.0, 1.0)
    measured = a >= 0
    mod = np.abs(f).astype(np.float32)
    diff = mod.astype(np.float64) - a.astype(np.float64)
    sums[0] += float(np.sum(np.where(measured, w * diff * diff, 0.0)))
    sums[1] += float(np.sum(np.where(measured, w * a.astype(np.float64) ** 2, 0.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(mod > 0, a / mod * np.float32(scale), 0).astype(np.float32)
    projected = np.where(mod > 0, f * ratio, (a * np.float32(scale)).astype(np.complex64))
    f[...] = np.where(measured, projected, f * np.float32(scale)).astype(np.complex64)


def _keep(value, support, positivity):
    return support & (value > 0) if positivity else support


def update_real(grid, block, x, y, support, positivity, algorithm, beta, size):
    size = int(size)
    x1, y1, s1 = x.reshape(-1)[:size], y.reshape(-1)[:size], support.reshape(-1)[:size]
    beta = np.float32(beta)
    if algorithm == 0:
        x1[...] = np.where(_keep(y1, s1, positivity), y1, np.float32(0))
    elif algorithm == 1:
        x1[...] = np.where(_keep(y1, s1, positivity), y1, x1 - beta * y1)
    else:
        x1[...] = np.where(_keep(2 * y1 - x1, s1, positivity), y1, beta * x1 + (1 - 2 * beta) * y1)


def project_support(grid, block, x, support, positivity, out, size):
    size = int(size)
    x1 = x.reshape(-1)[:size]
    out.reshape(-1)[:size] = np.where(_keep(x1, support.reshape(-1)[:size], positivity), x1, np.float32(0))


def multiply_separable(grid, block, spectrum, out, g0, g1, g2, n0, n1, n2):
    shape = (int(n0), int(n1), int(n2))
    g = (g0[:shape[0], None, None] * g1[None, :shape[1], None]) * g2[None, None, :shape[2]]
    out.reshape(shape)[...] = (spectrum.reshape(shape) * g.astype(np.float32)).astype(np.complex64)


def threshold_support(grid, block, volume, level, support, size, count):
    size = int(size)
    kept = volume.reshape(-1)[:size] > np.float32(level)
    support.reshape(-1)[:size] = kept
    count[0] += np.uint64(kept.sum())


KERNELS = {fn.__name__: fn for fn in (log_views, views, photon_log_likelihood, normalize_probabilities,
                                      weighted_photons, merge_views, photon_log_likelihood_bg, weighted_photons_bg,
                                      particle_photons, modulus_project, update_real, project_support,
                                      multiply_separable, threshold_support)}
