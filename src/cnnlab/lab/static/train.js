// The training page: a form that starts a real `cnnlab train`, the runs with their live state, and one run
// watched live (curves, epochs, health, snapshots with a time scrubber). Its state (run, step, image) is in the URL.
import uPlot from "/static/vendor/uPlot.esm.js";
import { $, header, get, post, state, setState, guarded, showError, esc, command, debounce } from "/static/common.js";

header();
const ERR = "#error";
const FPS_MS = 250;  // charts redrawn at most 4 times a second, however fast lines arrive
const COLORS = ["#2f6fdf", "#d9480f", "#1b7f3b", "#8e44ad", "#c2185b", "#00838f", "#6d4c41", "#7cb342", "#f9a825",
  "#455a64", "#5c6bc0", "#ef6c00"];
let form = null, runs = [], source = null, view = null;

// ------------------------------------------------------------------------------------------------ the form
const glob = (pat) => new RegExp("^" + pat.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".") + "$");
const defaultRecipe = (model) => form.recipes.find(r => r.models.some(p => glob(p).test(model)));
const options = (sel, items) => { sel.innerHTML = items.map(([v, t]) => `<option value="${esc(v)}">${esc(t)}</option>`).join(""); };

function body() {
  const num = (id) => { const v = $(id).value; return v === "" ? null : Number(v); };
  const opts = {};
  for (const part of $("#f-options").value.split(",").map(s => s.trim()).filter(Boolean)) {
    const [k, ...rest] = part.split("=");
    opts[k.trim()] = rest.join("=").trim();
  }
  const from = $("#f-from").value || null;
  return { model: $("#f-model").value, data: $("#f-data").value || null, recipe: $("#f-recipe").value || null,
    epochs: num("#f-epochs"), batch_size: num("#f-batch"), lr: num("#f-lr"), precision: $("#f-precision").value,
    seed: num("#f-seed"), deterministic: $("#f-det").checked, train_limit: num("#f-limit"), val_split: num("#f-val"),
    log_every: num("#f-log"), health_every: num("#f-health"), snapshots: $("#f-snap").checked,
    snapshot_every: num("#f-snap-every"), model_options: opts, transfer_from: from, transfer_mode: from ? $("#f-mode").value : null };
}

function formCommand() {  // what the form will run, as the user would type it
  const b = body();
  const words = b.transfer_from ? ["cnnlab", "transfer", "--from", `${b.transfer_from}`, "--model", b.model, "--mode", b.transfer_mode]
    : ["cnnlab", "train", b.model];
  const flag = (name, v) => { if (v !== null && v !== undefined && v !== "") words.push(name, String(v)); };
  flag("--data", b.data); flag("--recipe", b.recipe); flag("--epochs", b.epochs); flag("--batch-size", b.batch_size);
  flag("--train-limit", b.train_limit); flag("--log-every", b.log_every);
  flag("--seed", b.seed);
  flag("--lr", b.lr); flag("--val-split", b.val_split);
  if (b.precision !== "auto") flag("--precision", b.precision);
  if (b.deterministic) words.push("--deterministic");
  flag("--health-every", b.health_every); flag("--snapshot-every", b.snapshot_every);
  if (!b.snapshots) words.push("--no-snapshots");
  for (const [k, v] of Object.entries(b.model_options)) words.push("--model-option", `${k}=${v}`);
  words.push("--out", `${form.runs_name || "runs"}/${b.model}-${b.data || "DATA"}-TIME`, "--quiet");
  command("#cmd-start", words.join(" "));
}

function modelChanged() {
  const r = defaultRecipe($("#f-model").value);
  $("#f-epochs").placeholder = r ? r.epochs : ""; $("#f-batch").placeholder = r ? r.batch_size : "";
  $("#f-lr").placeholder = r ? r.lr : "";
  const data = $("#f-data");
  if (r && !$("#f-recipe").value && [...data.options].some(o => o.value === r.data)) data.value = r.data;
  formCommand();
}

async function loadForm() {
  form = await get("/api/train/form");
  options($("#f-model"), form.models.map(m => [m, m]));
  $("#f-model").value = form.models.includes("lenet5") ? "lenet5" : form.models[0];
  options($("#f-data"), form.datasets.map(d => [d, d]));
  options($("#f-recipe"), [["", "the model's"], ...form.recipes.map(r => [r.name, `${r.name} (${r.data})`])]);
  options($("#f-precision"), form.precisions.map(p => [p, p]));
  const src = await get("/api/sources");
  options($("#f-from"), [["", "nothing (from scratch)"],
    ...src.runs.filter(e => !e.problem).map(e => [e.id, `${e.label} (${e.model})`]),
    ...src.torchvision.map(e => [e.id, e.label])]);
  for (const el of $("#form").querySelectorAll("input, select")) el.addEventListener("input", formCommand);
  $("#f-model").addEventListener("change", modelChanged);
  $("#f-from").addEventListener("change", () => { $("#f-mode-l").hidden = !$("#f-from").value; formCommand(); });
  if (!form.has_runs) {
    $("#start").disabled = true;
    showError(ERR, new Error("the lab was started without --runs, so a training has nowhere to go: restart it with `cnnlab serve --runs runs`"));
  }
  modelChanged();
}

$("#start").addEventListener("click", guarded(ERR, async () => {
  const r = await post("/api/train/start", body());
  await refresh();
  open(r.id);
}));

// ------------------------------------------------------------------------------------------------ the runs
const STATE_TEXT = { queued: "queued", running: "running", paused: "paused", stopped: "stopped", finished: "finished",
  failed: "failed", external: "from the command line" };

async function refresh() {
  const r = await get("/api/train");
  runs = r.runs;
  $("#queue-note").textContent = `${r.running} of at most ${r.max} running, ${r.queued} queued`;
  $("#runs tbody").innerHTML = runs.map(x => {
    const b = [];
    if (x.lab && x.state === "running") b.push(`<button class="plain control" data-act="pause" data-id="${x.id}">pause</button>`);
    if (x.lab && x.resumable) b.push(`<button class="plain control" data-act="resume" data-id="${x.id}">resume</button>`);
    if (x.lab && (x.state === "running" || x.state === "queued")) b.push(`<button class="plain control" data-act="stop" data-id="${x.id}">stop</button>`);
    b.push(`<button class="control" data-act="open" data-id="${x.id}">open</button>`);
    return `<tr class="${x.id === state().run ? "sel" : ""}"><td>${esc(x.label)}</td>` +
      `<td class="l"><span class="state ${esc(x.state)}">${esc(STATE_TEXT[x.state] || x.state)}</span>` +
      `${x.note ? ` <span class="muted">${esc(x.note)}</span>` : ""}</td>` +
      `<td>${x.epochs ?? ""}${x.epochs_total ? " / " + x.epochs_total : ""}</td><td>${x.step ?? ""}</td>` +
      `<td>${x.top1 != null ? x.top1.toFixed(2) : ""}</td><td class="l">${b.join("")}</td></tr>`;
  }).join("") || `<tr><td colspan="6" class="muted">(no runs under --runs yet)</td></tr>`;
}

$("#runs").addEventListener("click", guarded(ERR, async (ev) => {
  const b = ev.target.closest("button");
  if (!b) return;
  if (b.dataset.act === "open") return open(b.dataset.id);
  await post(`/api/train/${b.dataset.id}/${b.dataset.act}`, {});
  await refresh();
}));

// ------------------------------------------------------------------------------------------------ charts
function chart(el, series, { log = false, height = 210 } = {}) {
  const width = Math.max(300, el.clientWidth || 560);
  const opts = { width, height, legend: { live: false }, cursor: { drag: { x: true, y: false } },
    scales: { x: { time: false }, y: log ? { distr: 3 } : { auto: true } },
    axes: [{ label: "step" }, { size: 60 }],
    series: [{ label: "step" }, ...series.map((s, i) => ({ stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
      points: { show: s.points ?? false, size: 6 }, ...s }))] };
  const u = new uPlot(opts, [[], ...series.map(() => [])], el);
  u.cols = [[], ...series.map(() => [])];  // the arrays appended to; setData shows them, at most 4 times a second
  u.dirty = false;
  return u;
}

function push(u, x, values) {  // one point per x; a second line at the same step fills the same point
  const xs = u.cols[0];
  let i = xs.length - 1;
  if (i < 0 || xs[i] !== x) {
    xs.push(x); for (let k = 1; k < u.cols.length; k++) u.cols[k].push(null);
    i = xs.length - 1;
  }
  values.forEach((v, k) => { if (v !== undefined) u.cols[k + 1][i] = v; });
  u.dirty = true;
}

function redraw() {
  if (!view) return;
  for (const u of Object.values(view.charts)) if (u.dirty) { u.dirty = false; u.setData(u.cols); }
  for (const u of Object.values(view.health.charts)) if (u.dirty) { u.dirty = false; u.setData(u.cols); }
}

// ------------------------------------------------------------------------------------------------ one run
function closeView() {
  if (!view) return;
  view.source.close();
  clearInterval(view.timer);
  for (const u of [...Object.values(view.charts), ...Object.values(view.health.charts)]) u.destroy();
  view = null;
}

function open(id) {
  if (state().run !== id) setState({ run: id, step: null, image: null });
  startView(id);
  refresh().catch(() => {});
}

function startView(id) {
  closeView();
  const run = runs.find(r => r.id === id);
  if (!run) { $("#view").hidden = true; return; }
  $("#view").hidden = false;
  $("#v-title").textContent = run.label;
  $("#epoch-rows").innerHTML = "";
  for (const el of ["#c-loss", "#c-acc", "#c-lr", "#c-ips", "#hc-grad", "#hc-ratio", "#hc-dead"]) $(el).innerHTML = "";
  $("#health-card").hidden = true; $("#snap-card").hidden = true;
  view = { id, run, snapshots: [], lastSnap: null, health: { charts: {}, layers: null }, charts: {
    loss: chart($("#c-loss"), [{ label: "train loss (step)" }, { label: "train loss (epoch)", points: true },
      { label: "eval loss", points: true }]),
    acc: chart($("#c-acc"), [{ label: "train top-1", points: true }, { label: "eval top-1", points: true }]),
    lr: chart($("#c-lr"), [{ label: "lr" }, { label: "lr changed", points: true, width: 0 }]),
    ips: chart($("#c-ips"), [{ label: "images/s" }]),
  } };
  view.timer = setInterval(redraw, FPS_MS);
  window.labTrain = view;  // for the tests: the charts' data, the snapshots seen
  const es = new EventSource(`/api/train/${encodeURIComponent(id)}/stream`);
  view.source = es;
  const mine = view;
  const on = (name, fn) => es.addEventListener(name, ev => { if (view === mine) fn(JSON.parse(ev.data)); });
  on("metrics", metrics);
  on("health", health);
  on("snapshot", snapshot);
  on("state", showState);
  on("reset", (r) => {  // a resumed run rewrote a file up to its checkpoint: start the curves again
    if (r.stream === "metrics") {
      for (const u of Object.values(view.charts)) { u.cols = u.cols.map(() => []); u.dirty = true; }
      $("#epoch-rows").innerHTML = "";
    } else if (r.stream === "snapshot") { view.snapshots = []; }
    else if (r.stream === "health") { for (const u of Object.values(view.health.charts)) { u.cols = u.cols.map(() => []); u.dirty = true; } }
  });
  es.onerror = () => {};  // the browser reconnects by itself (retry: 2 s)
  command("#cmd-curves", `cat ${run.label}/metrics.jsonl   # the lines these curves draw, as cnnlab train writes them`);
}

function metrics(m) {
  const c = view.charts;
  if (m.kind === "step") {
    push(c.loss, m.step, [m.loss]);
    push(c.lr, m.step, [m.lr]);
    push(c.ips, m.step, [m.images_per_s]);
  } else if (m.kind === "epoch") {
    push(c.loss, m.step, [undefined, m.train_loss, m.eval_loss]);
    push(c.acc, m.step, [m.train_top1, m.eval_top1]);
    const f = (v, d = 3) => v == null ? "" : Number(v).toFixed(d);
    $("#epoch-rows").insertAdjacentHTML("beforeend", `<tr><td>${m.epoch}</td><td>${m.step}</td><td>${f(m.train_loss, 4)}</td>` +
      `<td>${f(m.train_top1, 2)}</td><td>${esc(m.eval_split)}</td><td>${f(m.eval_loss, 4)}</td><td>${f(m.eval_top1, 2)}</td>` +
      `<td>${f(m.eval_top5, 2)}</td><td>${Number(m.lr).toExponential(2)}</td><td>${f(m.seconds, 1)}</td>` +
      `<td>${Math.round(m.images_per_s)}</td></tr>`);
  } else if (m.kind === "lr_change") {
    push(c.lr, m.step, [m.lr, m.lr]);
  }
}

function showState(s) {
  view.state = s;
  $("#v-state").textContent = STATE_TEXT[s.state] || s.state;
  $("#v-state").className = `state ${s.state}`;
  const parts = [];
  if (s.epochs_total) parts.push(`epoch ${s.epochs} of ${s.epochs_total} done`);
  if (s.step != null) parts.push(`step ${s.step}`);
  if (s.top1 != null) parts.push(`top-1 ${s.top1.toFixed(2)}%`);
  if (s.note) parts.push(s.note);
  if (view.lrSent) parts.push(view.lrSent);  // the last learning-rate change sent stays said
  $("#v-note").textContent = parts.join(" · ");
  const live = s.state === "running";
  $("#v-pause").hidden = !(s.lab && live); $("#v-stop").hidden = !(s.lab && (live || s.state === "queued"));
  $("#v-resume").hidden = !(s.lab && s.resumable);
  $("#lr-box").hidden = !(s.lab && live);
  $("#v-pause-note").textContent = s.state === "paused" || s.state === "stopped"
    ? `Resuming goes on from the end of the last complete epoch (${s.epochs || 0}); the epoch it was in runs again from its start.` : "";
  $("#v-links").innerHTML = s.checkpoint ? `${s.lab && (live || s.resumable) ? " · " : ""}<a href="/result?source=${esc(s.id)}">results</a> · ` +
    `<a href="/compare?runs=${esc(s.id)}">compare</a>` : "";
  if (s.command) command("#cmd-run", s.first_command && s.first_command !== s.command
    ? `${s.first_command}\n${s.command}   # resumed` : s.command);
  if (s.state !== view.lastState) { view.lastState = s.state; refresh().catch(() => {}); }
}

for (const act of ["pause", "resume", "stop"]) {
  $(`#v-${act}`).addEventListener("click", guarded(ERR, async () => {
    await post(`/api/train/${view.id}/${act}`, {});
    await refresh();
  }));
}
$("#v-lr-go").addEventListener("click", guarded(ERR, async () => {
  const v = Number($("#v-lr").value);
  if (!$("#v-lr").value || !(v > 0)) throw new TypeError("give the new learning rate, a positive number");
  const r = await post(`/api/train/${view.id}/lr`, { lr: v });
  view.lrSent = `learning rate ${v} sent (change #${r.lr.id}); the trainer applies it at its next step`;
  if (view.state) showState(view.state);
}));

// ------------------------------------------------------------------------------------------------ health
function bars(el, layers, key, { log = false, max = null } = {}) {
  const vals = layers.map(l => l[key]);
  const top = max ?? Math.max(1e-12, ...vals.filter(v => v != null));
  const pos = (v) => log ? Math.min(1, Math.max(0, (Math.log10(Math.max(v, 1e-7)) + 7) / 7)) : v / top;
  $(el).innerHTML = layers.map(l => {
    const v = l[key];
    const guide = log ? `<div class="guide" style="left:${(pos(1e-3) * 100).toFixed(1)}%" title="1e-3"></div>` : "";
    return `<div class="bar"><span class="mono">${esc(l.name)}</span><div class="track">` +
      (v == null ? "" : `<div class="fill" style="width:${(pos(v) * 100).toFixed(1)}%"></div>`) + guide +
      `</div><span class="mono">${v == null ? "–" : (log || v < 0.01 ? Number(v).toExponential(1) : Number(v).toFixed(3))}</span></div>`;
  }).join("");
}

function health(h) {
  const H = view.health;
  if (!H.layers) {
    H.layers = h.layers.map(l => l.name);
    $("#health-card").hidden = false;
    const per = H.layers.map(n => ({ label: n }));
    H.charts.grad = chart($("#hc-grad"), per, { height: 160, log: true });
    H.charts.ratio = chart($("#hc-ratio"), [...per, { label: "1e-3", stroke: "#b3261e", dash: [5, 5], width: 1 }], { height: 160, log: true });
    H.charts.dead = chart($("#hc-dead"), per, { height: 160 });
    command("#cmd-health", `cat ${view.run.label}/health.jsonl   # cnnlab train --health-every N writes it`);
  }
  const by = Object.fromEntries(h.layers.map(l => [l.name, l]));
  const col = (k, pos) => H.layers.map(n => { const v = by[n] && by[n][k]; return v == null || (pos && v <= 0) ? null : v; });
  push(H.charts.grad, h.step, col("grad_norm", true));
  push(H.charts.ratio, h.step, [...col("update_ratio", true), 1e-3]);
  push(H.charts.dead, h.step, col("dead", false));
  $("#h-step").textContent = `(step ${h.step}, epoch ${h.epoch})`;
  bars("#h-grad", h.layers, "grad_norm");
  bars("#h-ratio", h.layers, "update_ratio", { log: true });
  bars("#h-dead", h.layers, "dead", { max: 1 });
}

// ------------------------------------------------------------------------------------------------ snapshots
function snapshot(s) {
  view.snapshots.push(s);
  $("#snap-card").hidden = false;
  const sl = $("#scrub");
  sl.max = view.snapshots.length - 1;
  const wanted = state().step;
  if (wanted !== undefined && !$("#follow").checked) {
    const i = view.snapshots.findIndex(x => String(x.step) === wanted);
    if (i >= 0) { sl.value = i; loadSnap(); }
  } else if ($("#follow").checked) { sl.value = view.snapshots.length - 1; loadSnap(); }
  where();
}

function where() {
  const s = view.snapshots[Number($("#scrub").value)];
  if (s) $("#snap-where").textContent = `step ${s.step}, epoch ${s.epoch} (${Number($("#scrub").value) + 1} of ${view.snapshots.length})` +
    (s.has_confusion ? " · confusion matrix" : "");
}

const loadSnap = debounce(guarded(ERR, async () => {
  if (!view || !view.snapshots.length) return;
  const mine = view;
  const s = view.snapshots[Number($("#scrub").value)];
  const image = Number(state().image || 0);
  const r = await get(`/api/train/${view.id}/snapshot`, { step: s.step, image });
  if (view !== mine || Number($("#scrub").value) !== view.snapshots.indexOf(s)) return;  // a newer one was asked
  view.lastSnap = r;
  $("#filters").innerHTML = (r.filters || []).map((u, i) => `<img src="${u}" title="filter ${i}" alt="filter ${i}">`).join("");
  $("#probe").innerHTML = (r.probe || []).map((u, i) => `<img src="${u}" data-i="${i}" class="${i === r.image ? "sel" : ""}" ` +
    `title="${esc(r.classes ? r.classes[r.probe_labels[i]] : r.probe_labels[i])}" alt="probe ${i}">`).join("");
  $("#stages").innerHTML = r.stages.map(st => `<div class="stage"><div><b class="mono">${esc(st.layer)}</b><br>` +
    `<span class="muted" style="font-size:.8em">${st.shape.join(" x ")} · ${st.lo.toPrecision(2)} .. ${st.hi.toPrecision(2)}</span></div>` +
    `<div class="maps">${st.maps.map(u => `<img src="${u}">`).join("")}</div></div>`).join("");
  $("#confusion-box").innerHTML = r.confusion ? confusion(r.confusion, r.classes) : "";
  $("#snap-card").dataset.step = r.step;  // the step shown (a test waits on it)
  command("#cmd-snap", `python -c "import numpy as np; z = np.load('${view.run.label}/snapshots/${r.file}'); print(z.files)"` +
    "   # cnnlab train --snapshots writes these");
}), 60);

function confusion(m, classes) {
  const names = classes || m.map((_, i) => String(i));
  const rows = m.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    return `<tr><th>${esc(names[i])}</th>` + row.map((v, j) => {
      const a = v / total;
      const bg = i === j ? `rgba(27,127,59,${a.toFixed(2)})` : `rgba(179,38,30,${Math.min(1, a * 3).toFixed(2)})`;
      return `<td style="background:${bg}">${v}</td>`;
    }).join("") + "</tr>";
  }).join("");
  return `<h3>Confusion matrix at this epoch's end (rows: true class, columns: predicted)</h3>` +
    `<table class="cm"><tr><th></th>${names.map(n => `<th>${esc(n)}</th>`).join("")}</tr>${rows}</table>`;
}

$("#scrub").addEventListener("input", () => {  // a step picked by hand stays (in the URL too) until "follow" again
  $("#follow").checked = false;
  const s = view.snapshots[Number($("#scrub").value)];
  setState({ step: s.step });
  where();
  loadSnap();
});
$("#follow").addEventListener("change", () => {
  if ($("#follow").checked) { $("#scrub").value = view.snapshots.length - 1; setState({ step: null }); where(); loadSnap(); }
});
$("#probe").addEventListener("click", (ev) => {
  const i = ev.target.dataset && ev.target.dataset.i;
  if (i === undefined) return;
  setState({ image: i });
  loadSnap();
});

// ------------------------------------------------------------------------------------------------ start
guarded(ERR, async () => {
  if (state().step !== undefined) $("#follow").checked = false;
  await loadForm();
  await refresh();
  if (state().run) startView(state().run);
  setInterval(() => { if (!document.hidden) refresh().catch(() => {}); }, 3000);
})();
