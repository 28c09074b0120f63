"""PNGs of the report's plots (matplotlib), for logbooks and slides: drawn from the same data as report.html."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from spibatch.layout import REPORT_PNGS

PNG_NAMES = {"emc": REPORT_PNGS["emc"], "phase": REPORT_PNGS["phasing"], "fsc": REPORT_PNGS["fsc"]}


def _markers(ax, changes) -> None:
    for c in changes or []:
        ax.axvline(c["iteration"] - 0.5, color="#9a6700", ls=":", lw=1)
        ax.annotate(c["label"], (c["iteration"] - 0.5, 1), xycoords=("data", "axes fraction"), xytext=(2, -10),
                    textcoords="offset points", fontsize=7, color="#9a6700")


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], float)


def _save(fig, path: Path, tight: bool = True) -> None:
    """Write ``fig`` as a PNG at ``path`` (atomic); ``tight``: fit the margins to the labels first (0.3 s for the
    EMC figure, whose margins are fixed instead)."""
    from matplotlib.ticker import NullLocator

    from spibatch.io.atomic import atomic_path

    for ax in fig.axes:   # no minor log ticks: clearer, and each tick is three artists to make and draw --
        for axis in (ax.xaxis, ax.yaxis):   # unless the axis spans less than a decade (its only labelled ticks)
            lo, hi = sorted(axis.get_view_interval())
            if axis.get_scale() == "log" and not (0 < lo and hi < 10 * lo):
                axis.set_minor_locator(NullLocator())
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _emc(plt, responses: dict, path: Path) -> bool:
    series = responses.get("emc?run=.")
    if not series or not series["iteration"]:
        return False
    it = series["iteration"]
    last = (series.get("outputs") or [None])[-1]
    frames = responses.get(f"emc/frames?iteration={last}&run=.")
    slices = responses.get(f"emc/slices?iteration={last}&run=.")
    fig, axes = plt.subplots(2, 4, figsize=(17, 8), dpi=90)
    fig.subplots_adjust(left=0.05, right=0.955, bottom=0.07, top=0.955, wspace=0.42, hspace=0.3)
    panels = [("log_likelihood", "Log-likelihood (mean per frame)", "nats", "linear", "C0"),
              ("mutual_info", "Mutual information (mean per frame)", "nats", "linear", "C2"),
              ("rms_change", "Model change (rms, relative)", "rms change", "log", "C3"),
              ("beta_mean", "Annealing: β (mean over frames)", "β", "log", "C1")]
    for ax, (key, title, ylabel, scale, color) in zip(axes[0], panels):
        ax.plot(it, _arr(series[key]), "o-", ms=3, color=color)
        ax.set(title=title, xlabel="iteration", ylabel=ylabel, yscale=scale)
        ax.grid(alpha=0.3)
        _markers(ax, series.get("changes"))
    kept = _arr(series.get("mean_kept_rotations") or [])
    if kept.size and np.isfinite(kept).any():
        twin = axes[0][3].twinx()
        twin.plot(it, kept, "--", color="C4")
        twin.set(yscale="log", ylabel="rotations kept per frame (dashed)")
    if frames:
        h = frames["probability"]
        edges = np.asarray(h["edges"])
        axes[1][0].bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge", color="C0", log=True)
        axes[1][0].set(title=f"Orientation sharpness, iteration {frames['iteration']}",
                       xlabel="probability of the most likely rotation", ylabel="frames", xlim=(0, 1))
    else:
        axes[1][0].axis("off")
    for ax, s in zip(axes[1][1:], (slices or {}).get("slices", [])):
        z = np.array(s["z"], dtype=float)
        image = ax.imshow(z, origin="lower", cmap="viridis", vmin=slices["zmin"], vmax=slices["zmax"],
                          extent=(s["x"][0], s["x"][-1], s["y"][0], s["y"][-1]))
        ax.set(title=f"log10 intensity, {s['title']}\n(iteration {slices['iteration']})", xlabel=s["x_label"],
               ylabel=s["y_label"])
    if slices:
        fig.colorbar(image, ax=axes[1][3], label="log10 photons/voxel", shrink=0.85)
    else:
        for ax in axes[1][1:]:
            ax.axis("off")
    _save(fig, path, tight=False)
    return True


def _phase(plt, responses: dict, path: Path) -> bool:
    ph = responses.get("phase?run=.")
    if not ph or not ph["starts"]:
        return False
    density = responses.get("phase/slices?run=.")
    fig, axes = plt.subplots(2, 3, figsize=(15, 9), dpi=90)
    kept = set(ph.get("kept_seeds") or [])
    for i, s in enumerate(ph["starts"]):
        grey = ph.get("kept_seeds") is not None and s["seed"] not in kept
        axes[0][0].semilogy(np.arange(1, len(s["errors"]) + 1), _arr(s["errors"]), lw=0.8,
                            color="0.75" if grey else f"C{i % 10}", label=f"seed {s['seed']}")
    axes[0][0].set(title="Fourier error per iteration (grey: not kept)", xlabel="iteration",
                   ylabel="relative Fourier error")
    axes[0][0].grid(alpha=0.3)
    prtf = ph.get("prtf")
    ax = axes[0][1]
    if prtf and prtf.get("prtf"):
        y = _arr(prtf["prtf"])
        freq = prtf.get("frequency_per_m")
        x = np.asarray(freq) * 1e-9 if freq else np.arange(y.size)
        ax.plot(x, y, "o-", ms=3)
        ax.axhline(math.exp(-1), color="C3", ls="--", lw=1, label="1/e")
        if prtf.get("resolution_m"):
            ax.axvline(1e-9 / prtf["resolution_m"], color="C3", ls=":", lw=1,
                       label=f"1/e at {prtf['resolution_m'] * 1e9:.2f} nm")
        ax.set(title=f"PRTF ({len(kept)} starts)", ylim=(0, 1.15), ylabel="PRTF",
               xlabel="spatial frequency (1/nm)" if freq else "shell (Fourier voxels)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    else:
        ax.axis("off")
    axes[0][2].axis("off")
    res = (prtf or {}).get("resolution_m")
    facts = [f"{len(ph['starts'])} of {ph.get('planned') or len(ph['starts'])} starts done",
             f"{len(kept)} kept and averaged" if kept else "not merged yet",
             (f"PRTF 1/e at {res * 1e9:.2f} nm" if res else "PRTF above 1/e to the data edge") if prtf else ""]
    axes[0][2].text(0.02, 0.9, "\n".join(f for f in facts if f), va="top", fontsize=12, transform=axes[0][2].transAxes)
    for ax, s in zip(axes[1], (density or {}).get("slices", [])):
        extent = (s["x"][0], s["x"][-1], s["y"][0], s["y"][-1])
        image = ax.imshow(np.array(s["z"], float), origin="lower", cmap="gray", vmin=density["zmin"],
                          vmax=density["zmax"], extent=extent)
        if "support" in s:
            ax.contour(s["x"], s["y"], np.array(s["support"], float), levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set(title=f"Averaged density, {s['title']}", xlabel=s["x_label"], ylabel=s["y_label"])
    if density:
        fig.colorbar(image, ax=axes[1][2], label="density (arbitrary units)", shrink=0.85)
    else:
        for ax in axes[1]:
            ax.axis("off")
    _save(fig, path)
    return True


def _fsc(plt, responses: dict, path: Path) -> bool:
    f = responses.get("fsc?run=.")
    if not f:
        return False
    per_nm = f["frequency_unit"] == "1/m"
    x = np.asarray(f["frequency"]) * (1e-9 if per_nm else 1)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=90)
    ax.plot(x, _arr(f["fsc"]), "o-", ms=3)
    for t, color in ((0.5, "C1"), (0.143, "C2")):
        res = f.get(f"resolution_{t}_m")
        ax.axhline(t, color=color, ls="--", lw=1,
                   label=f"{t}: {res * 1e9:.2f} nm ({res * 1e10:.1f} Å)" if res else f"{t}: never below it")
    ax.set(title=f"FSC with the true density (cc {f['cc']:.3f})" if f.get("cc") is not None else "FSC",
           xlabel="spatial frequency (1/nm)" if per_nm else "spatial frequency (1/voxel)", ylabel="FSC",
           ylim=(-0.25, 1.05))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def write_pngs(responses: dict, run_dir: Path) -> list[Path]:
    """Write the PNGs this run has data for; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, draw in (("emc", _emc), ("phase", _phase), ("fsc", _fsc)):
        path = Path(run_dir) / PNG_NAMES[key]
        try:
            if draw(plt, responses, path):
                written.append(path)
        finally:
            plt.close("all")
    return written
