// Training curves of one or more runs (the /api/compare answer), one uPlot chart per metric with one series per
// run, on a shared x axis: epoch, step or wall time. Used by the result and the compare pages.
import uPlot from "/static/vendor/uPlot.esm.js";
import { esc } from "/static/common.js";

export const COLORS = ["#2f6fdf", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#c2255c", "#5c940d",
  "#364fc7", "#a61e4d", "#087f5b", "#495057"];
export const AXES = { epoch: "epoch", step: "step", time: "wall time (s)" };
const EPOCH_METRICS = [["train_loss", "training loss"], ["eval_loss", "evaluation loss"],
  ["train_top1", "training top-1 (%)"], ["eval_top1", "evaluation top-1 (%)"]];

// Where an epoch line sits on the chosen axis.
const epochX = (rec, axis) => axis === "epoch" ? rec.epoch : axis === "step" ? rec.step : rec.elapsed;

// Step lines carry no time: their wall time is interpolated between the epoch ends (0 s at step 0), and past the
// last epoch extrapolated at its pace; their epoch is step / steps per epoch.
function stepX(run, axis) {
  const ends = run.metrics.epoch.filter(r => r.step != null && r.elapsed != null);
  const perEpoch = run.settings.steps_per_epoch || (ends.length ? ends[0].step / ends[0].epoch : null);
  const knots = [[0, 0], ...ends.map(r => [r.step, r.elapsed])];
  return (s) => {
    if (axis === "step") return s;
    if (axis === "epoch") return perEpoch ? s / perEpoch : null;
    if (knots.length < 2) return null;
    for (let i = 1; i < knots.length; i++) {
      const [s0, t0] = knots[i - 1], [s1, t1] = knots[i];
      if (s <= s1) return t0 + (t1 - t0) * (s - s0) / Math.max(s1 - s0, 1);
    }
    const [s0, t0] = knots[knots.length - 2], [s1, t1] = knots[knots.length - 1];
    return t1 + (s - s1) * (t1 - t0) / Math.max(s1 - s0, 1);
  };
}

function table(points) {  // [[x, y], ...] -> [xs, ys] sorted by x, one y per x (the last)
  const m = new Map();
  for (const [x, y] of points) if (x != null && Number.isFinite(x) && y != null) m.set(x, y);
  const xs = [...m.keys()].sort((a, b) => a - b);
  return [xs, xs.map(x => m.get(x))];
}

// y ranges: losses from 0, accuracies within 0..100 around what was reached
const LOSS = (u, lo, hi) => [0, hi > 0 ? hi * 1.08 : 1];
const PERCENT = (u, lo, hi) => [Math.max(0, Math.floor(lo - 2)), Math.min(100, Math.ceil(hi + 2))];

function chart(el, title, runs, tables, axis, width, range) {
  if (!tables.some(t => t[0].length)) return null;
  const data = uPlot.join(tables);
  const fig = document.createElement("div");
  fig.className = "curve";
  el.appendChild(fig);
  const opts = {
    title, width, height: 230,
    scales: { x: { time: false }, y: { range } },
    axes: [{ label: AXES[axis] }, {}],
    series: [{ label: AXES[axis] }, ...runs.map((r, i) => ({
      label: r.label, stroke: COLORS[i % COLORS.length], width: 1.6, spanGaps: true,
      points: { show: tables[i][0].length < 40 },
    }))],
    legend: { live: true },
  };
  return new uPlot(opts, data, fig);
}

// Draw every metric's chart into `el` (emptied first); returns how many were drawn.
export function drawCurves(el, runs, axis = "epoch") {
  el.innerHTML = "";
  const width = Math.max(320, Math.min(620, (el.clientWidth || 1200) / 2 - 24));
  let drawn = 0;
  const split = runs.flatMap(r => r.metrics.epoch).map(r => r.eval_split).find(Boolean) || "test";
  for (const [key, name] of EPOCH_METRICS) {
    const tables = runs.map(r => table(r.metrics.epoch.map(rec => [epochX(rec, axis), rec[key]])));
    const range = key.endsWith("top1") ? PERCENT : LOSS;
    if (chart(el, name.replace("evaluation", split), runs, tables, axis, width, range)) drawn++;
  }
  const steps = runs.map(r => { const f = stepX(r, axis); return table(r.metrics.step.map(s => [f(s.step), s.loss])); });
  const approx = axis === "time" ? " (time interpolated between epoch ends)" : "";
  if (chart(el, `training loss every few steps${approx}`, runs, steps, axis, width, LOSS)) drawn++;
  if (!drawn) el.innerHTML = `<p class="muted">No curves yet: ${esc(runs.map(r => r.label).join(", "))} ` +
    `has not logged a step.</p>`;
  return drawn;
}
