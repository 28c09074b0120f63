/* spibatch monitor page: polls the read-only JSON API (or reads the data embedded in report.html)
   and draws the run with Plotly. No external resources. */
"use strict";

const REPORT = window.SPIBATCH_REPORT || null;   // set inside report.html: {generated, responses: {key: json}}
const state = { runs: [], run: null, follow: true, iteration: null, outputs: [],
                pollMs: 2000, busy: false, queued: [], lastOk: null, rendered: {} };
window.spibatchMonitor = state;                    // for tests and the curious

/* The same margins on the three slices of a row, wide enough on the right for the third one's colour bar:
   the three pictures come out the same size. */
const SLICE_MARGIN = { l: 56, r: 100, t: 38, b: 46 };

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#7f7f7f"];
const CONFIG = { displaylogo: false, responsive: true, displayModeBar: false };  // drag: zoom, double-click: reset

/* a log axis with one labelled tick per decade when the values span more than ~1.5 decades */
function logAxis(title, values, extra) {
  const v = (values || []).flat().filter((x) => x > 0);
  const span = v.length ? Math.log10(Math.max(...v) / Math.min(...v)) : 0;
  // under a quarter of a decade (a beta held constant), a range of half a decade round the values: Plotly's own
  // ticks on a flat log axis all read alike ("0.0389" five times)
  const flat = v.length && span < 0.25 ? { range: [Math.log10(Math.min(...v)) - 0.25, Math.log10(Math.max(...v)) + 0.25], tickformat: ".3~g" } : {};
  return Object.assign({ type: "log", title: { text: title }, exponentformat: "power" }, span > 1.5 ? { dtick: 1 } : span > 0.5 ? { dtick: "D2", tickformat: ".3~g" } : { tickformat: ".3~g" }, flat, extra || {});
}

function key(path, params) {
  const entries = Object.entries(params || {}).filter(([, v]) => v !== null && v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : 1));
  return path + "?" + entries.map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
}

/* GET api/<path>; null when there is nothing to show (404 not there yet, 403 refused, 422 unreadable),
   throws on 503 / network trouble */
async function api(path, params) {
  if (REPORT) {
    const hit = REPORT.responses[key(path, params)];
    return hit === undefined ? null : hit;
  }
  const response = await fetch("api/" + key(path, params), { cache: "no-store" });
  if ([403, 404, 422].includes(response.status)) return null;
  if (response.status === 503) throw new Error("a file is still being written");
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
const fmt = (v, digits = 4) => (v === null || v === undefined ? "–" : Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0)
  ? v.toExponential(digits - 1) : Number(v.toPrecision(digits)).toString());
/* a curve that never fell below its level, in the words the closing lines and the report use */
const neverBelow = (f) => `never below it (finer than ${f.data_edge_resolution_m ? "the data edge, " + nm(f.data_edge_resolution_m) : "the last shell compared"})`;
const nm = (m) => (m ? `${(m * 1e9).toFixed(2)} nm (${(m * 1e10).toFixed(1)} Å)` : null);

function ago(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function layout(title, xTitle, yTitle, extra) {
  return Object.assign({
    title: { text: title, font: { size: 13 }, x: 0.02, xanchor: "left" },
    margin: { l: 62, r: 16, t: 38, b: 46 }, font: { size: 11 }, showlegend: false,
    xaxis: { title: { text: xTitle }, zeroline: false, automargin: true },
    yaxis: { title: { text: yTitle }, zeroline: false, automargin: true },
    paper_bgcolor: "#fff", plot_bgcolor: "#fff",
  }, extra || {});
}

function draw(id, traces, lay) {
  const el = $(id);
  if (el.querySelector(".empty")) el.innerHTML = "";
  Plotly.react(el, traces, lay, CONFIG);
}

function empty(id, message) {
  const el = $(id);
  if (el.data) Plotly.purge(el);
  el.innerHTML = `<div class="empty">${esc(message)}</div>`;
}

/* ---------- the list of runs and the run header ---------- */

function renderRuns() {
  const nav = $("runs");
  nav.innerHTML = state.runs.map((r) => `<a href="#${encodeURIComponent(r.run)}" data-run="${esc(r.run)}"
      class="${r.run === state.run ? "current" : ""}"><div class="name">${esc(r.title)}
      <span class="badge ${esc(status(r))}">${esc(status(r))}</span></div>
      <div class="when">${r.run === r.title ? "" : esc(r.run === "." ? "(the monitored folder)" : r.run) + "<br>"}${esc(r.started || "")}</div></a>`).join("")
    || `<p class="muted" style="padding:10px">No runs here yet.</p>`;
}

/* where the gold-standard half sets' FSC crosses a threshold: a length when the voxel is known, else a shell */
function halfCrossing(h, t) {
  const radius = h[`fsc_${t}_radius`];
  if (radius == null) return `never below${h.r_max != null ? " (beyond shell " + h.r_max + ")" : ""}`;
  return nm(h[`resolution_${t}_m`]) || `shell ${radius.toFixed(1)}`;
}

function status(r) {
  if (r.status === "running" && r.last_update && Date.now() / 1000 - r.last_update > 600) return "stalled";
  return r.status || "unknown";
}

function renderHeader(s) {
  const facts = [["run folder", s.run === "." ? $("root").textContent : s.run], ["command", s.command],
    ["host", s.host], ["started", s.started], ["finished", s.finished]];
  if (s.last_update) facts.push(["last file change", `${new Date(s.last_update * 1000).toISOString().slice(0, 19)}Z`
    + (REPORT ? "" : ` (<span class="age" data-t="${s.last_update}"></span>)`)]);
  const heads = [];
  if (s.has.emc) heads.push(["EMC iteration", `${s.emc_iterations_done}${s.emc_iterations_planned && s.emc_iterations_done <= s.emc_iterations_planned ? " / " + s.emc_iterations_planned : ""}`]);
  if (s.emc_cc_with_truth != null) heads.push(["intensity cc with truth", fmt(s.emc_cc_with_truth, 3)]);
  if (s.emc_halves) heads.push(["half-set FSC 0.143 (no truth)", halfCrossing(s.emc_halves, "0.143")],
    ["half-set FSC 0.5", halfCrossing(s.emc_halves, "0.5")]);
  $("run-header").innerHTML = `<h1>${esc(s.title)} <span class="badge ${esc(status(s))}">${esc(status(s))}</span></h1>
    ${s.error ? `<p class="error">${esc(s.error)}</p>` : ""}
    <dl class="facts">${facts.filter(([, v]) => v).map(([k, v]) => `<dt>${esc(k)}</dt><dd>${k === "last file change" ? v : esc(v)}</dd>`).join("")}</dl>
    ${renderStages(s)}
    <div class="headline" id="headline">${heads.map(([k, v]) => `<div>${esc(k)}<b>${esc(v)}</b></div>`).join("")}</div>`;
}

/* the run's stages (a pipeline's, or a one-stage run's): done / running / waiting, with what each has done */
const STAGE_MARKS = { done: "✓", running: "●", waiting: "○", failed: "✗", interrupted: "✗", stopped: "■", "not run": "–" };
const seconds = (t) => (t < 90 ? `${t.toFixed(1)} s` : t < 5400 ? `${(t / 60).toFixed(1)} min` : `${(t / 3600).toFixed(1)} h`);
function renderStages(s) {
  if (!s.stages || !s.stages.length) return "";
  const items = s.stages.map((st) => {
    const started = !["waiting", "not run"].includes(st.state);
    const bits = [esc(st.state)];
    if (st.stage === "emc" && started && s.has.emc) bits.push(`iteration ${s.emc_iterations_done}${s.emc_iterations_planned && s.emc_iterations_done <= s.emc_iterations_planned ? " of " + s.emc_iterations_planned : ""}`);
    if (st.stage === "phase" && started && s.phasing) bits.push(`${s.phasing.starts_done}${s.phasing.starts_planned ? " of " + s.phasing.starts_planned : ""} starts${s.phasing.merged ? ", merged" : ""}`);
    if (st.state === "done" && st.seconds != null) bits.push(seconds(st.seconds));
    if (st.state === "running" && st.last_log && !REPORT) bits.push(`log <span class="age" data-t="${st.last_log}"></span>`);
    return `<li class="stage ${esc(st.state.replace(" ", "-"))}" data-stage="${esc(st.stage)}" data-state="${esc(st.state)}">`
      + `<b>${STAGE_MARKS[st.state] || ""} ${esc(st.stage)}</b> <span class="muted">${bits.join(" · ")}</span></li>`;
  });
  return `<ol id="stages" class="stages" aria-label="stages">${items.join("")}</ol>`;
}

/* "12 s ago" next to the last file change, kept current between refreshes */
function tickAges() {
  document.querySelectorAll(".age").forEach((el) => { el.textContent = ago(Date.now() / 1000 - Number(el.dataset.t)); });
}

function addHeadline(label, value) {
  const box = $("headline");
  if (box) box.insertAdjacentHTML("beforeend", `<div>${esc(label)}<b>${esc(value)}</b></div>`);
}

/* ---------- EMC ---------- */

function markers(changes, extraShapes) {
  const shapes = (changes || []).map((c) => ({ type: "line", xref: "x", yref: "paper", x0: c.iteration - 0.5,
    x1: c.iteration - 0.5, y0: 0, y1: 1, line: { color: "#9a6700", width: 1, dash: "dot" } }));
  const annotations = (changes || []).map((c) => ({ xref: "x", yref: "paper", x: c.iteration - 0.5, y: 1,
    yanchor: "top", xanchor: "left", text: esc(c.label), showarrow: false, font: { size: 10, color: "#9a6700" } }));
  return { shapes: shapes.concat(extraShapes || []), annotations };
}

function renderEmc(series) {
  const it = series.iteration;
  const last = it.length ? it[it.length - 1] : 0;
  const xr = [0.5, Math.max(series.planned || 0, last, 1) + 0.5];
  const mk = markers(series.changes);
  const planned = !series.planned ? "" : last <= series.planned ? ` of ${series.planned}`
    : ` (past emc.iterations = ${series.planned}: a live run goes on until its source ends and its model settles)`;
  $("emc-progress").textContent = it.length ? `— iteration ${last}${planned}` : "— waiting for the first iteration";
  const line = (y, name, color, extra) => Object.assign({ x: it, y, name, mode: "lines+markers", marker: { size: 5 },
    line: { color, width: 2 } }, extra || {});
  const xaxis = { title: { text: "iteration" }, range: xr, dtick: xr[1] > 30 ? undefined : 2, zeroline: false };
  draw("plot-loglik", [line(series.log_likelihood, "log-likelihood", PALETTE[0])],
    layout("Log-likelihood (mean per frame)", "iteration", "log-likelihood (nats)", { xaxis, ...mk }));
  draw("plot-info", [line(series.mutual_info, "mutual information", PALETTE[2])],
    layout("Mutual information (mean per frame)", "iteration", "nats", { xaxis, ...mk }));
  draw("plot-rms", [line(series.rms_change, "rms change", PALETTE[3])],
    layout("Model change (rms, relative)", "iteration", "rms change", { xaxis, ...mk, yaxis: logAxis("rms change", series.rms_change) }));
  const kept = series.mean_kept_rotations.some((v) => v != null);
  const traces = [line(series.beta_mean, "β (mean)", PALETTE[1])];
  if (kept) traces.push(line(series.mean_kept_rotations, "kept rotations", PALETTE[4], { yaxis: "y2", line: { color: PALETTE[4], width: 2, dash: "dash" } }));
  draw("plot-anneal", traces, layout(kept ? "Annealing: β and rotations kept per frame" : "Annealing: β", "iteration", "β", {
    xaxis, ...mk, margin: { l: 62, r: 62, t: 38, b: 46 },
    yaxis: logAxis("β (mean over frames)", series.beta_mean, { title: { text: "β (mean over frames)", font: { color: PALETTE[1] } } }),
    yaxis2: logAxis("rotations kept (dashed)", series.mean_kept_rotations, { overlaying: "y", side: "right", showgrid: false,
      title: { text: "rotations kept (dashed)", font: { color: PALETTE[4] } } }),
  }));
  state.rendered.emcIterations = it.length;
}

function setupSlider(outputs) {
  state.outputs = outputs;
  const slider = $("iteration");
  slider.min = 0;
  slider.max = Math.max(outputs.length - 1, 0);
  slider.disabled = outputs.length < 2;
  if (state.follow || state.iteration === null || !outputs.includes(state.iteration)) {
    state.iteration = outputs.length ? outputs[outputs.length - 1] : null;
  }
  slider.value = Math.max(outputs.indexOf(state.iteration), 0);
  sliderLabel();
}

function sliderLabel() {
  const n = state.outputs.length;
  $("iteration-label").textContent = state.iteration === null ? "none yet"
    : `${state.iteration} (output file ${state.outputs.indexOf(state.iteration) + 1} of ${n})`;
}

async function renderIteration() {
  const iteration = state.iteration;
  if (iteration === null) {
    ["plot-prob", "plot-slice-0", "plot-slice-1", "plot-slice-2"].forEach((id) => empty(id, "no output_NNN.h5 yet"));
    return;
  }
  const [frames, slices] = await Promise.all([api("emc/frames", { run: state.run, iteration }),
    api("emc/slices", { run: state.run, iteration })]);
  if (frames) {
    const h = frames.probability;
    const centres = h.counts.map((_, i) => (h.edges[i] + h.edges[i + 1]) / 2);
    draw("plot-prob", [{ type: "bar", x: centres, y: h.counts, width: h.edges[1] - h.edges[0],
      marker: { color: PALETTE[0] }, hovertemplate: "P ≈ %{x:.2f}: %{y} frames<extra></extra>" }],
    layout(`Orientation sharpness, it. ${frames.iteration} (median ${frames.median_probability.toFixed(2)})`,
      "probability of the most likely rotation", "frames", {
      yaxis: logAxis("frames", h.counts), xaxis: { title: { text: "probability of the most likely rotation" }, range: [0, 1] } }));
  } else empty("plot-prob", "no per-frame probabilities (best_probability) in this output file");
  if (slices) {
    slices.slices.forEach((s, i) => {
      const trace = { type: "heatmap", x: s.x, y: s.y, z: s.z, zmin: slices.zmin, zmax: slices.zmax,
        colorscale: "Viridis", showscale: i === 2, hoverongaps: false,
        colorbar: { title: { text: "log₁₀ photons<br>per voxel", side: "right" }, thickness: 12, xpad: 4 },
        hovertemplate: `${s.x_label.split(" ")[0]} %{x}<br>${s.y_label.split(" ")[0]} %{y}<br>log₁₀ I %{z:.2f}<extra></extra>` };
      draw(`plot-slice-${i}`, [trace], layout(`Intensity, ${s.title.replace(/_(\w)/g, "<sub>$1</sub>")} (it. ${slices.iteration})`,
        s.x_label.replace(/_(\w)/, "<sub>$1</sub>"), s.y_label.replace(/_(\w)/, "<sub>$1</sub>"),
        { yaxis: { title: { text: s.y_label.replace(/_(\w)/, "<sub>$1</sub>") }, scaleanchor: "x", constrain: "domain" },
          xaxis: { title: { text: s.x_label.replace(/_(\w)/, "<sub>$1</sub>") }, constrain: "domain" },
          margin: SLICE_MARGIN }));
    });
    state.rendered.sliceIteration = slices.iteration;
  }
}

/* ---------- a live source (a run that follows one) ---------- */

const clock = (t) => (t ? `${new Date(t * 1000).toISOString().slice(11, 19)}Z` : "–");
const pct = (v) => (v == null ? "–" : `${(100 * v).toFixed(1)}%`);

/* the latency said with its two end points: the preview the caption below names, or the full final density
   (phase/phasing.h5, written when the phase stage ended) beside the quick final preview's own */
function latencyText(d, p) {
  if (d.kind !== "final") return `${seconds(d.latency_s)} (${d.kind}, iteration ${d.iteration})`;
  const quick = p && p.final && p.latency_s != null ? `; the quick final preview: ${seconds(p.latency_s)}` : "";
  return `${seconds(d.latency_s)} to the full final density (phase/phasing.h5)${quick}`;
}

function renderFollow(f) {
  const p = f.latest_preview, d = f.newest_density;
  $("follow-progress").textContent = `— ${f.state || "?"}${f.end_reason ? " (" + f.end_reason + ")" : ""}`;
  const bad = Object.entries(f.bad_trains || {}).map(([k, v]) => `${v} ${k}`).join(", ");
  const rows = [["source", f.source], ["frames so far", f.frames_seen], ["hits so far", f.hits],
    ["hit rate", `${pct(f.hit_rate)}${f.last_batch_hit_rate != null ? " (last commit " + pct(f.last_batch_hit_rate) + ")" : ""}`],
    ["hit threshold", f.threshold != null ? `${fmt(f.threshold, 3)} lit pixels${f.threshold_rule ? " (" + f.threshold_rule + ")" : ""}` : null],
    ["trains skipped", bad || "none"], ["newest frame", clock(f.last_received)],
    ["latest preview", p ? `iteration ${p.iteration}, ${p.frames} frames, written ${clock(p.written)}${p.final ? " (quick final)" : ""}` : "none yet"],
    ["newest frame → newest density", d && d.latency_s != null ? latencyText(d, p) : "–"]];
  $("follow-facts").innerHTML = rows.filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd data-key="${esc(k)}">${esc(v)}</dd>`).join("");
  const h = f.history || { time: [] };
  if (h.time.length) {
    const t0 = h.time[0];
    draw("plot-hitrate", [{ x: h.time.map((t) => t - t0), y: h.hit_rate.map((r) => (r == null ? null : 100 * r)), mode: "lines+markers",
      marker: { size: 4 }, line: { color: PALETTE[0] }, customdata: h.frames_seen,
      hovertemplate: "%{x:.1f} s: %{y:.1f}% of the frames<br>%{customdata} frames so far<extra></extra>" }],
      layout("Hit rate, commit by commit", "time since the first commit (s)", "hits (% of frames)", { yaxis: { rangemode: "tozero", title: { text: "hits (% of frames)" } } }));
  } else empty("plot-hitrate", "The hit rate appears with the first commit.");
  const lit = f.lit_histogram;
  if (lit && lit.counts.some((c) => c > 0)) {
    const upto = lit.counts.reduce((last, c, i) => (c > 0 ? i + 1 : last), 0);   // empty bins above the last used: left off
    const counts = lit.counts.slice(0, upto);
    const labels = counts.map((_, i) => (i + 1 >= lit.edges.length ? `≥${lit.edges[i]}`
      : lit.edges[i + 1] - 1 === lit.edges[i] ? `${lit.edges[i]}` : `${lit.edges[i]}–${lit.edges[i + 1] - 1}`));
    draw("plot-lit", [{ type: "bar", x: labels, y: counts, marker: { color: PALETTE[2] } }],
      layout(`Lit pixels per frame (threshold ${f.threshold != null ? fmt(f.threshold, 3) : "?"})`, "lit pixels", "frames",
        { yaxis: logAxis("frames", counts), xaxis: { type: "category", title: { text: "lit pixels" } } }));
  } else empty("plot-lit", "The lit-pixel histogram appears with the first frames.");
  state.rendered.follow = f.frames_seen;
}

function renderPreview(pv) {
  if (!pv) {
    [0, 1, 2].forEach((i) => empty(`plot-preview-${i}`, i === 1 ? "A preview density appears every few EMC iterations." : ""));
    $("preview-note").textContent = "";
    return;
  }
  const r = pv.preview;
  pv.slices.forEach((s, i) => {
    draw(`plot-preview-${i}`, [{ type: "heatmap", x: s.x, y: s.y, z: s.z, zmin: pv.zmin, zmax: pv.zmax, colorscale: "Greys",
      showscale: i === 2, colorbar: { thickness: 12, xpad: 4 } }],
      layout(`Preview, iteration ${r.iteration}, ${s.title}`, s.x_label, s.y_label, {
        yaxis: { title: { text: s.y_label }, scaleanchor: "x", constrain: "domain" }, xaxis: { title: { text: s.x_label }, constrain: "domain" },
        margin: SLICE_MARGIN }));
  });
  $("preview-note").textContent = `Preview density of EMC iteration ${r.iteration} (${r.frames} frames, ${r.starts} starts${r.final ? ", the quick final density" : ""}),`
    + ` written ${clock(r.written)}${r.latency_s != null ? ", " + seconds(r.latency_s) + " after the newest frame it could include" : ""}.`;
  state.rendered.preview = r.iteration;
}

/* ---------- phasing and validation ---------- */

function renderPhase(ph) {
  const kept = new Set(ph.kept_seeds || []);
  const merged = ph.kept_seeds !== null;
  $("phase-progress").textContent = `— ${ph.starts.length}${ph.planned ? " of " + ph.planned : ""} starts done` + (merged ? `, ${kept.size} kept and averaged` : "");
  const traces = ph.starts.map((s, i) => ({ x: s.errors.map((_, j) => j + 1), y: s.errors, mode: "lines",
    name: `seed ${s.seed}${merged ? (kept.has(s.seed) ? " (kept)" : "") : ""}`,
    line: { width: merged && !kept.has(s.seed) ? 1 : 1.6, color: merged ? (kept.has(s.seed) ? PALETTE[i % 10] : "#c4c8d0") : PALETTE[i % 10] } }));
  const shapes = [];
  let at = 0;
  const algos = (ph.starts[0] && ph.starts[0].algorithms) || [];
  const runs = algos.length > 12 ? [] : algos;
  const total = runs.reduce((sum, [, n]) => sum + n, 0);
  const annotations = runs.map(([name, n]) => { const x = at + n / 2; at += n;
    if (at < total) shapes.push({ type: "line", xref: "x", yref: "paper", x0: at + 0.5, x1: at + 0.5, y0: 0, y1: 1, line: { color: "#aaa", width: 1, dash: "dot" } });
    return { xref: "x", yref: "paper", x, y: 1, yanchor: "bottom", text: esc(name), showarrow: false, font: { size: 10, color: "#687085" } }; });
  draw("plot-errors", traces, layout(`Fourier error per iteration, each start${merged ? " (grey: not kept)" : ""}`, "iteration",
    "relative Fourier error", { yaxis: logAxis("relative Fourier error", ph.starts.map((s) => s.errors)), shapes, annotations, showlegend: ph.starts.length <= 10,
      legend: { font: { size: 10 } } }));
  state.rendered.phaseStarts = ph.starts.length;
  const prtf = ph.prtf;
  if (!prtf || !prtf.prtf) { empty("plot-prtf", "The PRTF appears when every start has finished."); return; }
  const perNm = prtf.frequency_per_m ? prtf.frequency_per_m.map((f) => f * 1e-9) : null;
  const x = perNm || prtf.prtf.map((_, i) => i);
  const xTitle = perNm ? "spatial frequency (1/nm)" : "shell (Fourier voxels)";
  const shapes2 = [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: Math.exp(-1), y1: Math.exp(-1), line: { color: "#d62728", dash: "dash", width: 1 } }];
  const notes = [{ xref: "paper", yref: "y", x: 0.99, y: Math.exp(-1), xanchor: "right", yanchor: "bottom", text: "1/e", showarrow: false, font: { color: "#d62728" } }];
  let res = kept.size < 2 ? "one start kept: its PRTF is 1 by construction (no resolution)"
    : "PRTF stays above 1/e to the edge of the data";
  if (prtf.resolution_shell != null) {
    const xr = perNm ? perNm[1] * prtf.resolution_shell : prtf.resolution_shell;
    shapes2.push({ type: "line", xref: "x", yref: "paper", x0: xr, x1: xr, y0: 0, y1: 1, line: { color: "#d62728", dash: "dot", width: 1 } });
    res = `1/e at ${nm(prtf.resolution_m) || "shell " + prtf.resolution_shell.toFixed(1)}`;
  }
  notes.push({ xref: "paper", yref: "paper", x: 0.99, y: 0.99, xanchor: "right", showarrow: false, text: esc(res) });
  draw("plot-prtf", [{ x, y: prtf.prtf, mode: "lines+markers", marker: { size: 4 }, line: { color: PALETTE[0] } }],
    layout(`Phase retrieval transfer function (${kept.size} starts)`, xTitle, "PRTF", { yaxis: { range: [0, 1.15], title: { text: "PRTF" } }, shapes: shapes2, annotations: notes }));
  addHeadline("PRTF resolution", kept.size < 2 ? "none (one start)" : prtf.resolution_m ? nm(prtf.resolution_m)
    : "beyond the data edge");
}

/* phasing under way on workers: only the count of finished starts exists until they are merged */
function renderPhaseProgress(p) {
  $("phase-progress").textContent = `— ${p.starts_done}${p.starts_planned ? " of " + p.starts_planned : ""} starts done`;
  empty("plot-errors", "Each start's error curve appears when the starts are merged (they run on the workers).");
  empty("plot-prtf", "The PRTF appears when every start has finished.");
  renderDensity(null);
  state.rendered.phaseStarts = p.starts_done;
}

function renderDensity(d) {
  if (!d) {
    [0, 1, 2].forEach((i) => empty(`plot-density-${i}`, i === 1 ? "The averaged density appears when every start has finished." : ""));
    $("density-note").textContent = "";
    return;
  }
  d.slices.forEach((s, i) => {
    const traces = [{ type: "heatmap", x: s.x, y: s.y, z: s.z, zmin: d.zmin, zmax: d.zmax, colorscale: "Greys",
      showscale: i === 2, colorbar: { title: { text: "density<br>(arb. units)", side: "right" }, thickness: 12, xpad: 4 },
      hovertemplate: `${s.x_label.split(" ")[0]} %{x}<br>${s.y_label.split(" ")[0]} %{y}<br>ρ %{z:.3g}<extra></extra>` }];
    if (s.support) traces.push({ type: "contour", x: s.x, y: s.y, z: s.support, showscale: false, hoverinfo: "skip",
      contours: { coloring: "none", start: 0.5, end: 0.5, size: 1 }, line: { color: "#00b5d8", width: 1.5 } });
    draw(`plot-density-${i}`, traces, layout(`Averaged density, ${s.title}`, s.x_label, s.y_label, {
      yaxis: { title: { text: s.y_label }, scaleanchor: "x", constrain: "domain" }, xaxis: { title: { text: s.x_label }, constrain: "domain" },
      margin: SLICE_MARGIN }));
  });
  $("density-note").textContent = `Central slices of the averaged density (${d.shown} of ${d.edge} voxels a side shown, `
    + `cropped to the support); cyan line: the support (kept in at least half of the kept starts).`;
}

function renderFsc(f) {
  const perNm = f.frequency_unit === "1/m";
  const x = f.frequency.map((v) => (perNm ? v * 1e-9 : v));
  const shapes = [0.5, 0.143].map((t, i) => ({ type: "line", xref: "paper", x0: 0, x1: 1, y0: t, y1: t,
    line: { color: PALETTE[1 + i], dash: "dash", width: 1 } }));
  const annotations = [0.5, 0.143].map((t, i) => ({ xref: "paper", yref: "y", x: 0.99, y: t, xanchor: "right", yanchor: "bottom",
    showarrow: false, text: `${t}`, font: { color: PALETTE[1 + i] } }));
  draw("plot-fsc", [{ x, y: f.fsc, mode: "lines+markers", marker: { size: 4 }, line: { color: PALETTE[0] } }],
    layout("Fourier shell correlation with the true density", perNm ? "spatial frequency (1/nm)" : "spatial frequency (1/voxel)", "FSC",
      { yaxis: { range: [-0.25, 1.05], title: { text: "FSC" } }, shapes, annotations }));
  const rows = [["real-space cc", fmt(f.cc, 3) + (f.inverted ? " (inversion twin)" : "")],
    ["FSC = 0.5 at", nm(f["resolution_0.5_m"]) || neverBelow(f)],
    ["FSC = 0.143 at", nm(f["resolution_0.143_m"]) || neverBelow(f)]];
  if (f.data_edge_resolution_m) rows.push(["data edge", nm(f.data_edge_resolution_m)]);
  $("fsc-text").innerHTML = rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
  if (f["resolution_0.5_m"]) addHeadline("FSC 0.5 with truth", nm(f["resolution_0.5_m"]));
  state.rendered.fsc = true;
}

/* ---------- refresh cycle ---------- */

async function refreshRun() {
  const run = state.run;
  const s = await api("run", { run });
  if (!s || run !== state.run) return;
  renderHeader(s);
  tickAges();
  const i = state.runs.findIndex((r) => r.run === run);
  if (i >= 0 && status(state.runs[i]) !== status(s)) { state.runs[i] = s; renderRuns(); }
  $("emc").hidden = !s.has.emc;
  $("live-source").hidden = !s.has.follow;
  if (s.has.follow) {
    const f = await api("follow", { run });
    if (f) {
      renderFollow(f);
      renderPreview(f.latest_preview ? await api("follow/preview", { run }) : null);
    }
  }
  const phasing = s.phasing;
  const phasingShown = s.has.phase || !!(phasing && (phasing.starts_done > 0 || phasing.state === "running"));
  $("phase").hidden = !phasingShown;
  $("fsc").hidden = !s.has.fsc;
  if (s.has.emc) {
    const series = await api("emc", { run });
    if (series) {
      renderEmc(series);
      setupSlider(series.outputs || []);
      await renderIteration();
    }
  }
  if (s.has.phase) {
    const ph = await api("phase", { run });
    if (ph) renderPhase(ph);
    renderDensity(s.has.phase_result ? await api("phase/slices", { run }) : null);
  } else if (phasingShown) {
    renderPhaseProgress(phasing);
  }
  if (s.has.fsc) { const f = await api("fsc", { run }); if (f) renderFsc(f); }
  const texts = await api("texts", { run });
  $("texts").hidden = !texts;
  if (texts) for (const k of ["log", "emc_log", "config", "provenance"]) {
    $(`text-${k}`).textContent = texts[k] || "(not in this run)";
    $(`text-${k}`).closest("details").hidden = !texts[k];
  }
  state.rendered.fingerprint = s.fingerprint;
  document.body.dataset.rendered = s.fingerprint;
}

/* One update at a time. A call that arrives while another runs (the user moves the slider during a
   poll) is queued, once per function, and runs next: it is never dropped. */
async function guarded(fn) {
  if (state.busy) { if (!state.queued.includes(fn)) state.queued.push(fn); return; }
  state.busy = true;
  try { await fn(); markLive(true); } catch (err) { markLive(false, err); } finally { state.busy = false; }
  if (state.queued.length) await guarded(state.queued.shift());
}

function markLive(ok, err) {
  const live = $("live");
  if (REPORT) { live.textContent = `static report, written ${REPORT.generated}`; return; }
  if (ok) state.lastOk = new Date();
  live.className = "live " + (ok ? "ok" : "stale");
  const why = err && err.message === "a file is still being written" ? err.message : `server not answering (${err && err.message})`;
  live.textContent = ok ? `live — checked ${state.lastOk.toLocaleTimeString()}` : `${why}; retrying`;
}

async function loadRuns() {
  const listing = await api("runs", {});
  state.runs = listing.runs;
  state.pollMs = Number(new URLSearchParams(location.search).get("poll")) || listing.poll_ms || 2000;
  $("root").textContent = listing.root;
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (state.run === null || !state.runs.some((r) => r.run === state.run)) {
    state.run = state.runs.some((r) => r.run === wanted) ? wanted : (state.runs[0] ? state.runs[0].run : null);
  }
  renderRuns();
}

async function pollOnce() {
  if (state.tick++ % 5 === 0) await loadRuns();
  if (state.run === null) {
    $("run-header").innerHTML = `<p class="muted">No runs under ${esc($("root").textContent)} yet; they appear here as they start.</p>`;
    return;
  }
  tickAges();
  const fp = await api("fingerprint", { run: state.run });
  if (fp && fp.fingerprint !== state.rendered.fingerprint) await refreshRun();
}

async function poll() {
  await guarded(pollOnce);
  setTimeout(poll, state.pollMs);
}

function selectRun(run) {
  state.run = run; state.rendered = {}; state.follow = true; $("follow").checked = true;
  renderRuns();
  guarded(refreshRun);
}

$("runs").addEventListener("click", (ev) => {
  const a = ev.target.closest("a[data-run]");
  if (!a) return;
  ev.preventDefault();
  history.replaceState(null, "", "#" + encodeURIComponent(a.dataset.run));
  selectRun(a.dataset.run);
});
$("iteration").addEventListener("input", (ev) => {
  state.iteration = state.outputs[Number(ev.target.value)];
  state.follow = state.iteration === state.outputs[state.outputs.length - 1];
  $("follow").checked = state.follow;
  sliderLabel();
  guarded(renderIteration);
});
$("follow").addEventListener("change", (ev) => {
  state.follow = ev.target.checked;
  if (state.follow) { setupSlider(state.outputs); guarded(renderIteration); }
});

state.tick = 0;
if (REPORT) {
  guarded(async () => { await loadRuns(); $("runs").hidden = true; await refreshRun(); });
} else {
  poll();
}
