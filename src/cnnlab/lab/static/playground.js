// Conv arithmetic playground: every number comes from /api/playground/* (cnnlab.analysis.conv_arith, the NumPy
// pooling layers); this file only lays them out and draws the window sliding over the padded input.
import { $, $$, header, get, state, setState, guarded, debounce, command, esc } from "/static/common.js";

header();

const DEFAULTS = { mode: "conv", h: 5, w: 5, c: 3, k: 3, s: 2, p: 1, d: 1, f: 2, g: 1, ceil: 0, op: "max",
  ps: 2, pst: 2, pop: "max" };
const FIELDS = ["h", "w", "c", "k", "s", "p", "d", "f", "g"];
let arith = null;   // the last answer of /api/playground/conv|pool
let pos = { i: 0, j: 0 };
let timer = null;

const current = () => ({ ...DEFAULTS, ...state() });

function fillControls() {
  const st = current();
  for (const f of FIELDS) $("#" + f).value = st[f];
  $("#mode").value = st.mode;
  $("#ceil").checked = ["1", "true"].includes(String(st.ceil));
  $("#op").value = st.op;
  $("#ps").value = st.ps; $("#pst").value = st.pst; $("#pop").value = st.pop;
  for (const el of $$(".conv-only")) el.hidden = st.mode !== "conv";
  for (const el of $$(".pool-only")) el.hidden = st.mode !== "pool";
}

function readControls() {
  const changes = { mode: $("#mode").value, ceil: $("#ceil").checked ? 1 : 0, op: $("#op").value };
  for (const f of FIELDS) changes[f] = $("#" + f).value;
  return changes;
}

// ------------------------------------------------------------------------------------------- the numbers
const num = n => Number(n).toLocaleString("en-US", { maximumFractionDigits: 4 });

function formula(axis) {
  const res = axis.fits ? `${axis.out}` : `<span class="bad">${num(axis.exact)}</span> → ${axis.out}` +
    (axis.ceil_mode ? " (ceil mode rounds up)" : " (PyTorch rounds down)");
  const [lhs] = axis.formula.split(" = ");
  return `${esc(lhs)} = <span class="res">${res}</span>`;
}

function showNumbers(a) {
  const r = a.report, conv = r.kind === "conv";
  $("#title").textContent = conv ? "Output size, parameters, multiply-adds" : "Output size and work";
  $("#dilated").textContent = r.dilation > 1 ?
    `effective filter F = D·(K − 1) + 1 = ${r.dilation}·(${r.kernel} − 1) + 1 = ${a.height.kernel}` : "";
  $("#fh").innerHTML = formula(a.height);
  $("#fw").innerHTML = formula(a.width);
  $("#misfit").textContent = a.misfit.length ? a.misfit.join("\n") : "";
  $("#misfit").style.whiteSpace = "pre-wrap";
  const fixes = new Map();
  for (const axis of [a.height, a.width]) {
    for (const f of axis.fits_pad) fixes.set(`p=${f.pad}`, `pad ${f.pad} → ${f.out}`);
    for (const f of axis.fits_stride) fixes.set(`s=${f.stride}`, `stride ${f.stride} → ${f.out}`);
  }
  $("#fixes").innerHTML = fixes.size ? `<span class="muted">nearest that fit:</span> ` + [...fixes].map(([k, v]) =>
    `<button class="plain fix control" data-fix="${k}">${esc(v)}</button>`).join("") : "";
  const rows = [["output height", "output_h", r.output[0]], ["output width", "output_w", r.output[1]],
    ["output channels", "output_c", r.output[2]], ["exact height", "exact_h", r.exact_output[0]],
    ["exact width", "exact_w", r.exact_output[1]], ["output values", "outputs", a.outputs]];
  if (conv) rows.push(["weights K·K·(C/groups)·filters", "weights", r.weights], ["biases", "biases", r.biases],
    ["parameters", "params", r.params], ["multiply-adds", "macs", r.macs]);
  else rows.push(["parameters", "params", r.params],
    [a.op === "max" ? "comparisons" : "additions", "macs", r.macs]);
  $("#numbers").innerHTML = rows.map(([label, key, v]) =>
    `<div class="num" data-key="${key}" data-value="${v}"><span>${label}</span><b>${num(v)}</b></div>`).join("");
  $("#text").textContent = a.text;
  command("#cmd", a.command);
}

// ---------------------------------------------------------------------------------- the sliding window
const COLOURS = { input: "#ffffff", pad: "#dfe3ea", uncovered: "#ffc9c9", over: "#f3f0ff", window: "#8fb3ff",
  tap: "#2f6fdf", out: "#eef1f6", cell: "#ffa94d", grid: "#c5cad4" };

function geometry(a) {
  const r = a.report, P = r.pad, K = a.height.kernel;  // K: the effective (dilated) size
  const axes = [a.height, a.width].map(ax => {
    const padded = ax.size + 2 * P;
    const extent = Math.max(padded, (ax.out - 1) * ax.stride + K);  // ceil mode hangs over the edge
    return { padded, extent, out: ax.out, stride: ax.stride, size: ax.size, uncovered: ax.uncovered_from };
  });
  return { P, K, D: r.dilation, k: r.kernel, axes };
}

function cellSize(extentH, extentW, room) {
  return Math.max(2, Math.min(30, Math.floor(room / Math.max(extentH, extentW))));
}

function kind(g, r, c) {  // what the padded-input cell (r, c) is
  const [ah, aw] = g.axes;
  if (r >= ah.padded || c >= aw.padded) return "over";
  if (r < g.P || c < g.P || r >= g.P + ah.size || c >= g.P + aw.size) return "pad";
  if ((ah.uncovered !== null && r >= ah.uncovered) || (aw.uncovered !== null && c >= aw.uncovered)) return "uncovered";
  return "input";
}

function drawWindow() {
  if (!arith) return;
  const a = arith, g = geometry(a), [ah, aw] = g.axes;
  $("#nodraw").textContent = a.drawable ? "" :
    "This input is too large to draw cell by cell (more than 512 a side padded); the numbers above still hold.";
  $("#in").hidden = $("#out").hidden = !a.drawable;
  const { i, j } = pos;
  const top = i * ah.stride, left = j * aw.stride;  // padded coordinates of the window's first tap
  const taps = [...Array(g.k).keys()].map(t => t * g.D);
  const win = $("#window");
  Object.assign(win.dataset, { i, j, row: top - g.P, col: left - g.P, rows: ah.out, cols: aw.out,
    size: g.K, taps: taps.join(",") });
  const rowEnd = top - g.P + g.K - 1, colEnd = left - g.P + g.K - 1;
  $("#where").textContent = `output (${i}, ${j}) ← input rows ${top - g.P}…${rowEnd}, columns ${left - g.P}…` +
    `${colEnd}` + (g.D > 1 ? ` (${g.k}×${g.k} taps, ${g.D} apart)` : "") +
    (rowEnd >= ah.size + g.P || colEnd >= aw.size + g.P ? "; it hangs over the edge (ceil mode): only what is inside counts"
      : top < g.P || left < g.P || rowEnd >= ah.size || colEnd >= aw.size ? "; part of it reads padding" : "") +
    `  ·  step ${i * aw.out + j + 1} of ${ah.out * aw.out}`;
  $("#cin").textContent = `${a.report.input[2]}`;
  $("#cout").textContent = `${a.report.output[2]}`;
  if (!a.drawable) return;

  const cs = cellSize(ah.extent, aw.extent, 460);
  const cv = $("#in"), ctx = cv.getContext("2d");
  cv.width = aw.extent * cs; cv.height = ah.extent * cs;
  for (let r = 0; r < ah.extent; r++) for (let c = 0; c < aw.extent; c++) {
    ctx.fillStyle = COLOURS[kind(g, r, c)];
    ctx.fillRect(c * cs, r * cs, cs, cs);
  }
  ctx.fillStyle = COLOURS.window; ctx.globalAlpha = 0.55;
  ctx.fillRect(left * cs, top * cs, g.K * cs, g.K * cs);
  ctx.globalAlpha = 1; ctx.fillStyle = COLOURS.tap;
  for (const a1 of taps) for (const b1 of taps) ctx.fillRect((left + b1) * cs + 1, (top + a1) * cs + 1, cs - 2, cs - 2);
  gridLines(ctx, ah.extent, aw.extent, cs);
  ctx.strokeStyle = "#1d2330"; ctx.lineWidth = 2;
  ctx.strokeRect(g.P * cs, g.P * cs, aw.size * cs, ah.size * cs);  // the image's own border
  ctx.strokeStyle = "#e8590c";
  ctx.strokeRect(left * cs + 1, top * cs + 1, g.K * cs - 2, g.K * cs - 2);

  const oc = $("#out"), octx = oc.getContext("2d"), os = cellSize(ah.out, aw.out, 300);
  oc.width = aw.out * os; oc.height = ah.out * os;
  octx.fillStyle = COLOURS.out; octx.fillRect(0, 0, oc.width, oc.height);
  octx.fillStyle = COLOURS.cell; octx.fillRect(j * os, i * os, os, os);
  gridLines(octx, ah.out, aw.out, os);
}

function gridLines(ctx, rows, cols, cs) {
  if (cs < 6) return;
  ctx.strokeStyle = COLOURS.grid; ctx.lineWidth = 1; ctx.beginPath();
  for (let r = 0; r <= rows; r++) { ctx.moveTo(0, r * cs + 0.5); ctx.lineTo(cols * cs, r * cs + 0.5); }
  for (let c = 0; c <= cols; c++) { ctx.moveTo(c * cs + 0.5, 0); ctx.lineTo(c * cs + 0.5, rows * cs); }
  ctx.stroke();
}

function move(delta) {
  if (!arith) return;
  const rows = arith.height.out, cols = arith.width.out, n = rows * cols;
  const k = ((pos.i * cols + pos.j + delta) % n + n) % n;
  pos = { i: Math.floor(k / cols), j: k % cols };
  setState({ i: pos.i, j: pos.j });
  drawWindow();
}

function play() {
  if (timer) { clearInterval(timer); timer = null; $("#play").textContent = "▶ play"; return; }
  $("#play").textContent = "⏸ pause";
  timer = setInterval(() => {
    const last = arith && pos.i === arith.height.out - 1 && pos.j === arith.width.out - 1;
    if (last) return play();
    move(1);
  }, 450);
}

// ---------------------------------------------------------------------------------------------- loading
const load = guarded("#error", async () => {
  const st = current();
  const params = { input: `${st.h}x${st.w}x${st.c}`, kernel: st.k, stride: st.s, pad: st.p };
  const path = st.mode === "pool" ? "/api/playground/pool" : "/api/playground/conv";
  if (st.mode === "pool") Object.assign(params, { ceil_mode: st.ceil, op: st.op });
  else Object.assign(params, { dilation: st.d, filters: st.f, groups: st.g });
  try {
    arith = await get(path, params);
  } catch (e) {
    arith = null;
    for (const id of ["#fh", "#fw", "#numbers", "#fixes", "#misfit", "#text", "#where"]) $(id).textContent = "";
    command("#cmd", "");
    throw e;
  }
  const rows = arith.height.out, cols = arith.width.out;
  pos = { i: Math.min(Number(st.i) || 0, rows - 1), j: Math.min(Number(st.j) || 0, cols - 1) };
  showNumbers(arith);
  drawWindow();
});

function apply(changes) {
  setState({ ...changes, i: null, j: null });
  fillControls();
  load();
}

// ------------------------------------------------------------------------- the lecture's max-pool matrix
function matrix(values, { rowNames = null, colNames = null, cls = () => "", attrs = () => "" } = {}) {
  const head = colNames ? `<tr>${rowNames ? "<th></th>" : ""}${colNames.map(c => `<th>${esc(c)}</th>`).join("")}</tr>` : "";
  return `<table class="mat">${head}${values.map((row, r) => `<tr>${rowNames ? `<th>${esc(rowNames[r])}</th>` : ""}` +
    row.map((v, c) => `<td class="${cls(r, c, v)}" data-value="${v}" ${attrs(r, c)}>${fracText(v)}</td>`).join("") +
    "</tr>").join("")}</table>`;
}
const fracText = v => Number.isInteger(v) ? String(v) : (Math.abs(v * 4 - Math.round(v * 4)) < 1e-9 && v > 0 && v < 1 ?
  `${Math.round(v * 4)}/4`.replace("2/4", "1/2") : v.toFixed(3));

let poolAnswer = null;
function showPool(e, pick = null) {
  const x = e.x, w = x[0].length, yw = e.y[0].length;
  const winOf = (i, j) => [i * e.stride, j * e.stride];
  const inPick = (r, c) => {
    if (!pick) return false;
    const [r0, c0] = winOf(...pick);
    return r >= r0 && r < r0 + e.size && c >= c0 && c < c0 + e.size;
  };
  const argmaxOf = new Map((e.argmax || []).map(([r, c], n) => [`${r},${c}`, n]));
  const xTable = matrix(x, { cls: (r, c) => (argmaxOf.has(`${r},${c}`) ? "arg" : "") + (inPick(r, c) ? " hl" : ""),
    attrs: (r, c) => argmaxOf.has(`${r},${c}`) ? `data-argmax-of="${e.rows[argmaxOf.get(`${r},${c}`)]}"` : "" });
  const yTable = matrix(e.y, { cls: (r, c) => "pick" + (pick && pick[0] === r && pick[1] === c ? " hl" : ""),
    attrs: (r, c) => `data-i="${r}" data-j="${c}"` });
  const row = pick ? pick[0] * yw + pick[1] : -1;
  const aTable = matrix(e.jacobian, { rowNames: e.rows, colNames: e.columns,
    cls: (r, c, v) => (v === 1 ? "one" : v === 0 ? "zero" : "arg") + (r === row ? " hl" : "") });
  $("#mats").innerHTML =
    `<div id="pool-x"><h3>input x (${x.length}×${w})${e.argmax ? ", maxima shaded" : ""}</h3>${xTable}</div>` +
    `<div id="pool-y"><h3>output y = ${e.op}-pool(x)</h3>${yTable}</div>` +
    `<div id="pool-a"><h3>Jacobian dy/dx = A (${e.jacobian.length}×${e.jacobian[0].length})</h3>${aTable}</div>` +
    `<div id="pool-g"><h3>dL/dy (example)</h3>${matrix(e.grad)}</div>` +
    `<div id="pool-dx"><h3>dL/dx = Aᵀ·dL/dy</h3>${matrix(e.dx, { cls: (r, c, v) => v ? "arg" : "zero" })}</div>`;
  for (const td of $$("#pool-y td")) td.onclick = () => showPool(e, [Number(td.dataset.i), Number(td.dataset.j)]);
}

const loadPool = guarded("#pool-error", async () => {
  const st = current();
  try {
    poolAnswer = await get("/api/playground/explain-pool", { size: st.ps, stride: st.pst, op: st.pop });
  } catch (e) { $("#mats").innerHTML = ""; $("#pool-text").textContent = ""; command("#pool-cmd", ""); throw e; }
  showPool(poolAnswer);
  $("#pool-text").textContent = poolAnswer.text;
  command("#pool-cmd", poolAnswer.command);
});

// ------------------------------------------------------------------------------------------------ wiring
const changed = debounce(() => apply(readControls()), 250);
for (const f of FIELDS) $("#" + f).addEventListener("input", changed);
for (const id of ["#mode", "#ceil", "#op"]) $(id).addEventListener("change", () => apply(readControls()));
for (const b of $$(".preset")) b.onclick = () => {
  const preset = Object.fromEntries(new URLSearchParams(b.dataset.preset));
  apply({ mode: "conv", d: 1, g: 1, ceil: 0, op: "max", ...preset });
};
$("#fixes").addEventListener("click", ev => {
  const b = ev.target.closest("[data-fix]");
  if (!b) return;
  const [k, v] = b.dataset.fix.split("=");
  apply({ ...readControls(), [k]: v });
});
$("#first").onclick = () => { pos = { i: 0, j: 0 }; move(0); };
$("#back").onclick = () => move(-1);
$("#step").onclick = () => move(1);
$("#play").onclick = play;
for (const id of ["#ps", "#pst", "#pop"]) $(id).addEventListener("change", () => {
  setState({ ps: $("#ps").value, pst: $("#pst").value, pop: $("#pop").value });
  loadPool();
});

fillControls();
load();
loadPool();
