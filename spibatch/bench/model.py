"""The performance model of one EMC iteration and one phasing iteration, calibrated and checked on the matrix.

EMC, per iteration, from the sizes (:mod:`spibatch.bench.sizes`) and this machine's kernel rates
(:mod:`spibatch.bench.kernels`, seconds per unit on one thread):

* one shard's kernels (one thread): expand ``R P_used a_x``; likelihood ``R (E_used l_e + D l_d)``;
  normalize ``K a_n`` (K kept (frame, rotation) entries); merge ``R (P_merged m_p + E_merged m_e) + M^3 m_v`` --
  per shard, since every shard expands and merges all R rotations; a_x and m_p grow with the model edge M (cache:
  measured at 49^3 and 211^3, log-linear between);
* a worker of t threads runs at ``t^beta x share`` thread-speeds: ``beta`` the thread-scaling exponent (1: perfect),
  ``share = min(1, cores / load)`` the part of a core a thread gets while the load average exceeds the cores
  (others' jobs), relative to the share the microbenchmarks had (they ran under the load they recorded);
* HPC (w ranks): compute = ceil(S / w) shards; reduce = one Allreduce of the sums (2 (w-1)/w x 16 M^3 bytes
  over the link) + the finish (5 x 8 M^3 bytes through memory);
* HTC (w workers, S tasks): compute = ceil(S / w) rounds of one shard; data movement = the model written once
  and read by each task (8 M^3 bytes each); dispatch = a task latency per round + S x 16 M^3 bytes of sums
  returned through the interchange; reduce = S x 24 M^3 bytes added in memory + the finish.

Measured = ``k_compute`` x compute + ``k_overhead`` x (everything else), fitted by non-negative least squares on the
relative errors of the calibration points; ``beta`` is not fitted: it is the microbenchmarks' (1 and all cores) on
a quiet machine, 1 on a loaded one (:func:`micro_beta`).  Which points calibrate is the bench file's ``model``
section (``calibrate_workers``, ``calibrate_sites``; default: the smallest worker count); every other point is a
check the fit never saw.  Phasing: a warm start's iteration ``k_phasing a_fft(N, t) N^3 log2 N^3 / share``, with
``a_fft(N, t)`` the microbenchmark's HIO rate at the workload's edge N on t threads (an FFT's rate depends on N's
prime factors, and a second thread does not pay at small N), or a_fft / t^beta_phasing where none was timed; the
phase stage ``ceil(starts / w)`` warm starts + a worker's warm-up (its first start's extra seconds,
measured) + ``b_phase_s`` (dispatch, merge).
"""

from __future__ import annotations

import math

import numpy as np

GOAL = 0.25


def micro_beta(rates: dict, part: str = "emc") -> float:
    """The thread-scaling exponent: log(rate_1 / rate_N) / log N of the microbenchmarks (median over the expand and
    merge kernels; phasing: the FFT-bound iteration) -- when they ran on a machine whose load average stayed within
    its cores.  On a loaded machine a thread gets its share of a core whatever its process (the ``share`` term) and
    1 vs N threads measures the others' jobs, not the kernels: 1 there."""
    cores = sorted(int(c) for c in rates[part])
    loads = [v[0] for v in (rates.get("load_start"), rates.get("load_end")) if v and v[0] is not None]
    if cores[-1] <= 1 or (loads and max(loads) > rates.get("cores", cores[-1])):
        return 1.0
    one, most = rates[part]["1"], rates[part][str(cores[-1])]
    keys = [k for k, v in one.items() if isinstance(v, float) and k.startswith(("expand", "merge", "per_n3"))]
    values = [math.log(one[k] / most[k]) / math.log(cores[-1]) for k in keys if one[k] > 0 and most[k] > 0]
    return float(np.clip(np.median(values), 0.0, 1.0)) if values else 1.0


def per_rot_pixel(one: dict, key: str, model_edge: int) -> float:
    """An expand or merge rate per rotation x pixel for a ``model_edge``^3 model: the in-cache rate up to the small
    microbenchmark model, the out-of-cache one from the large, log-linear in the edge between (and beyond: 1)."""
    edges = one.get("model_edges")
    if not edges or f"{key}_large" not in one:
        return one[key]
    small, large = edges
    x = float(np.clip((math.log(model_edge) - math.log(small)) / (math.log(large) - math.log(small)), 0.0, 1.0))
    return one[key] * (1 - x) + one[f"{key}_large"] * x


def shard_kernels(sizes: dict, rates: dict, kept_per_frame: float | None = None) -> dict:
    """One (average) shard's kernel seconds on one thread."""
    one = rates["emc"]["1"]
    s = sizes["shards"]
    r, d = sizes["rotations"], sizes["frames"] / s
    kept = d * (kept_per_frame if kept_per_frame is not None else r)
    m = sizes["model_edge"]
    return {"expand": r * sizes["pixels_used"] * per_rot_pixel(one, "expand_per_rot_pixel", m),
            "likelihood": r * (sizes["entries_used"] / s * one["likelihood_per_rot_entry"]
                               + d * one["likelihood_per_rot_frame"]),
            "normalize": kept * one["normalize_per_kept"],
            "merge": r * (sizes["pixels_merged"] * per_rot_pixel(one, "merge_per_rot_pixel", m)
                          + sizes["entries_merged"] / s * one["merge_per_rot_entry"])
            + m ** 3 * one.get("merge_per_voxel", 0.0)}


def share(load: float | None, cores: int) -> float:
    """The fraction of a core a thread gets when the load average exceeds the cores."""
    return 1.0 if not load or load <= cores else cores / load


def relative_share(load: float | None, rates: dict) -> float:
    """A thread's speed at ``load`` relative to the microbenchmarks' (which ran at the load they recorded)."""
    cores = rates.get("cores", 1)
    during = [v[0] for v in (rates.get("load_start"), rates.get("load_end")) if v and v[0] is not None]
    return share(load, cores) / share(sum(during) / len(during) if during else None, cores)


def emc_terms(sizes: dict, mode: str, workers: int, threads: int, rates: dict, *, beta: float = 1.0,
              load: float | None = None, kept_per_frame: float | None = None, link_bytes_per_s: float | None = None,
              dispatch_s: float | None = None, result_bytes_per_s: float | None = None) -> dict:
    """Uncalibrated seconds of one EMC iteration: ``compute``, ``reduce``, ``data_movement``, ``dispatch``.

    link_bytes_per_s: the Allreduce link (default: this machine's memory add bandwidth / 3: one node);
    dispatch_s, result_bytes_per_s: Parsl's per-task latency and result bandwidth (default: measured here).
    """
    per_shard = sum(shard_kernels(sizes, rates, kept_per_frame).values()) / (
        max(threads, 1) ** beta * relative_share(load, rates))
    m3 = sizes["model_edge"] ** 3
    memory = rates["memory"]
    add = memory["add_bytes_per_s"]
    finish = 5 * 8 * m3 / add
    shards = sizes["shards"]
    rounds = math.ceil(shards / workers)
    if mode == "hpc":
        link = link_bytes_per_s or add / 3
        allreduce = 0.0 if workers == 1 else 2 * (workers - 1) / workers * 16 * m3 / link
        return {"compute": rounds * per_shard, "reduce": allreduce + finish, "data_movement": 0.0, "dispatch": 0.0}
    parsl = rates.get("parsl") or {}
    latency = dispatch_s if dispatch_s is not None else parsl.get("per_task_s", 0.003)
    result = result_bytes_per_s or parsl.get("result_bytes_per_s", 5e8)
    return {"compute": rounds * per_shard, "reduce": shards * 24 * m3 / add + finish,
            "data_movement": 8 * m3 / memory["npy_write_bytes_per_s"] + 8 * m3 / memory["npy_read_bytes_per_s"],
            "dispatch": rounds * latency + shards * 16 * m3 / result}


def combine(terms: dict, params: dict) -> float:
    """A calibrated prediction: k_compute x compute + k_overhead x the rest."""
    rest = sum(v for k, v in terms.items() if k != "compute")
    return params["k_compute"] * terms["compute"] + params["k_overhead"] * rest


def fit(rows: list[tuple[dict, float]]) -> tuple[dict, float]:
    """(k_compute, k_overhead) >= 0 minimising the relative errors of ``rows`` (terms, measured); and that sum of
    squared relative errors."""
    from scipy.optimize import nnls

    a = np.array([[t["compute"], sum(v for k, v in t.items() if k != "compute")] for t, _ in rows])
    y = np.array([m for _, m in rows])
    solution, residual = nnls(a / y[:, None], np.ones(len(y)))
    return {"k_compute": float(solution[0]), "k_overhead": float(solution[1])}, float(residual ** 2)


def _load(record: dict) -> float | None:
    values = [r[k][0] for r in record.get("repeat_runs", []) for k in ("load_start", "load_end")
              if r.get(k) and r[k][0] is not None]
    return float(np.mean(values)) if values else None


def calibrates(document: dict):
    """``role(point) -> "calibration" | "check"`` from the bench file's ``model`` section (default: the smallest
    worker count calibrates), and a description of the split."""
    settings = document.get("model_settings") or {}
    workers, sites = settings.get("calibrate_workers"), settings.get("calibrate_sites")
    if not workers and not sites:
        counts = sorted({p["workers"] for p in document["points"] if p["status"] == "measured"})
        workers = counts[:1]

    def role(p: dict) -> str:
        ok = (not workers or p["workers"] in workers) and (not sites or p["site"] in sites)
        return "calibration" if ok else "check"

    return role, {"calibrate_workers": workers or None, "calibrate_sites": sites or None}


def _emc_rows(document: dict, beta: float) -> list[tuple[dict, dict, float]]:
    rates, rows = document["rates"], []
    for p in document["points"]:
        if p["status"] == "measured" and p["kind"] == "emc" and p.get("sizes"):
            terms = emc_terms(p["sizes"], p["mode"], p["workers"], p.get("threads_per_worker") or 1, rates, beta=beta,
                              load=_load(p), kept_per_frame=p["summary"].get("mean_kept_rotations"))
            rows.append((p, terms, p["summary"]["iteration_s"]["median"]))
    return rows


def evaluate(document: dict) -> dict:
    """Calibrate on the calibration points, predict every measured point; errors per point and the verdict."""
    role, split = calibrates(document)
    beta = micro_beta(document["rates"])
    rows = _emc_rows(document, beta)
    cal = [(t, m) for p, t, m in rows if role(p) == "calibration"]
    out_points, params = [], {}
    if cal:
        params = {**fit(cal)[0], "beta": beta}
        for p, terms, measured in rows:
            predicted = combine(terms, params)
            scaled = {k: v * (params["k_compute"] if k == "compute" else params["k_overhead"])
                      for k, v in terms.items()}
            out_points.append({"key": p["key"], "kind": "emc", "role": role(p), "measured_s": measured,
                               "predicted_s": predicted, "error": (predicted - measured) / measured,
                               "predicted_phases_s": scaled, "measured_phases_s": p["summary"].get("phases_s"),
                               "load": _load(p)})
    phasing = evaluate_phasing(document, role)
    out_points += phasing["points"]
    checks = [abs(p["error"]) for p in out_points if p["role"] == "check"]
    cals = [abs(p["error"]) for p in out_points if p["role"] == "calibration"]
    return {**split, "calibrate_workers": split["calibrate_workers"] or [], "parameters": {**params,
            **phasing["parameters"]}, "points": out_points, "goal": GOAL,
            "calibration_max_abs_error": max(cals) if cals else None,
            "check_max_abs_error": max(checks) if checks else None,
            "check_median_abs_error": float(np.median(checks)) if checks else None,
            "check_within_goal": (max(checks) <= GOAL) if checks else None,
            "underdetermined": 0 < len(cal) < 2}   # two parameters from one point: k_compute 0 "fits" it


def phasing_rate_at(rates: dict, edge: int, threads: int, beta: float = 1.0) -> float:
    """Seconds per N^3 log2 N^3 of an HIO iteration of ``edge`` on ``threads`` threads: the microbenchmark's at
    this edge and thread count when it ran them (the matrix's edges are timed), else the one-thread rate (at
    this edge, or the median over the standard edges) over threads^beta."""
    table = rates["phasing"]
    measured = (table.get(str(threads)) or {}).get("edges", {}).get(str(edge))
    if measured:
        return measured["per_n3logn3"]
    one = table["1"]
    at_edge = one.get("edges", {}).get(str(edge))
    return (at_edge or one)["per_n3logn3"] / max(threads, 1) ** beta


def phasing_terms(edge: int, threads: int, rates: dict, load: float | None = None, beta: float = 1.0) -> float:
    """Uncalibrated seconds of one phasing iteration (one start) on ``threads`` threads."""
    rate = phasing_rate_at(rates, edge, threads, beta)
    return rate * edge ** 3 * math.log2(edge ** 3) / relative_share(load, rates)


def evaluate_phasing(document: dict, role) -> dict:
    """k_phasing (the geometric mean of measured / predicted over the calibration points' iteration times); the
    stage: ceil(starts / w) starts + b_phase_s."""
    rates = document["rates"]
    pts = [p for p in document["points"] if p["status"] == "measured" and p["kind"] == "phasing" and p.get("sizes")]
    cal_pts = [p for p in pts if role(p) == "calibration"]
    if not pts or not cal_pts:
        return {"parameters": {}, "points": []}
    beta = micro_beta(rates, "phasing")
    base = {p["key"]: phasing_terms(p["sizes"]["edge"], p.get("threads_per_worker") or 1, rates, _load(p), beta)
            for p in pts}
    k = float(np.exp(np.mean(np.log([p["summary"]["iteration_s"]["median"] / base[p["key"]] for p in cal_pts]))))

    def stage_work(p):   # the starts one worker runs, warm, plus its first start's warm-up (measured)
        warm = p["summary"]["start_s"]["median"]
        first = (p["summary"].get("first_start_s") or {}).get("median") or warm
        return math.ceil(p["sizes"]["starts"] / p["workers"]) * p["sizes"]["iterations"] * k * base[p["key"]] \
            + max(0.0, first - warm)

    b_stage = float(np.median([max(0.0, p["summary"]["stage_s"]["median"] - stage_work(p)) for p in cal_pts]))
    out = []
    for p in pts:
        it_meas, it_pred = p["summary"]["iteration_s"]["median"], k * base[p["key"]]
        st_meas, st_pred = p["summary"]["stage_s"]["median"], stage_work(p) + b_stage
        out.append({"key": p["key"], "kind": "phasing", "role": role(p), "measured_s": it_meas, "predicted_s": it_pred,
                    "error": (it_pred - it_meas) / it_meas, "load": _load(p),
                    "stage_measured_s": st_meas, "stage_predicted_s": st_pred,
                    "stage_error": (st_pred - st_meas) / st_meas if st_meas else None})
    return {"parameters": {"k_phasing": k, "beta_phasing": beta, "b_phase_s": b_stage}, "points": out}


def summary_line(model: dict) -> str:
    """One line: the fit and how well it predicts the points it never saw."""
    worst = model.get("check_max_abs_error")
    split = ", ".join(f"{k.removeprefix('calibrate_')} {v}" for k, v in model.items()
                      if k in ("calibrate_workers", "calibrate_sites") and v)
    if model.get("underdetermined"):
        split += " (one EMC point for two parameters: the fit is not determined)"
    if worst is None:
        return f"model: calibrated on {split or 'nothing'}; no check points (the matrix needs points outside it)"
    verdict = "within" if model["check_within_goal"] else "NOT within"
    return (f"model: calibrated on {split}; on the points it never saw, errors up to {100 * worst:.0f}% (median "
            f"{100 * model['check_median_abs_error']:.0f}%): {verdict} the {100 * model['goal']:.0f}% goal")
