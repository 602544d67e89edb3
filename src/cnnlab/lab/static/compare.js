// The compare page: runs picked by checkbox (state: runs=r-a,r-b), their curves overlaid (state: x = epoch | step |
// time), their settings with the differences marked (state: only=1), the fidelity rows of each, one CSV download;
// and the degradation problem (plain20 against resnet20 or plain56 on CIFAR-10) in one click.
import { $, $$, header, get, post, state, setState, guarded, esc, fmt, command, ApiError } from "/static/common.js";
import { drawCurves, COLORS } from "/static/curves.js";

header();
const ERR = "#error";
let sources = [];  // the runs under --runs
let answer = null;  // the /api/compare answer shown
let timer = null;
const pending = new Set();  // runs this page started: until the trainer writes their folder, the lab cannot list them
const gen = {};
const fresh = (panel) => { gen[panel] = (gen[panel] || 0) + 1; const g = gen[panel]; return () => gen[panel] === g; };
const chosen = () => (state().runs || "").split(",").filter(Boolean);

async function start() {
  const r = await get("/api/sources");
  sources = r.runs;
  const want = chosen();
  $("#picks").innerHTML = sources.length ? sources.map(e => {
    const acc = e.top1 != null ? `, ${e.top1.toFixed(2)}% after ${e.epochs} epochs` : "";
    return `<label title="${esc(e.problem || "")}"><input type="checkbox" value="${esc(e.id)}" ` +
      `${want.includes(e.id) ? "checked" : ""}> ${esc(e.label)} <span class="muted">(${esc(e.model)}` +
      `${e.data ? ", " + esc(e.data) : ""}${acc}${e.problem ? "; in progress" : ""})</span></label>`;
  }).join("") : `<span class="muted">No runs under --runs yet: train some on the Train page, or start the pair above.</span>`;
  const axis = state().x || "epoch";
  for (const el of $$("input[name=axis]")) el.checked = el.value === axis;
  $("#only").checked = state().only === "1";
  await load();
}

$("#picks").addEventListener("change", guarded(ERR, async () => {
  const ids = $$("#picks input:checked").map(el => el.value);
  setState({ runs: ids.join(",") || null });
  await load();
}));

async function load() {
  const ok = fresh("load");
  clearTimeout(timer);
  const ids = chosen();
  if (!ids.length) { $("#body").hidden = true; return; }
  let r;
  try {
    r = await get("/api/compare", { runs: ids.join(",") });
  } catch (e) {  // a queued training's folder not written yet: wait for it rather than fail
    if (!(e instanceof ApiError && /no run with id/.test(e.message) && ids.some(id => pending.has(id)))) throw e;
    $("#pair-note").textContent = "Waiting for the trainings to write their run folders (queued ones wait for the " +
      "one before them)…";
    timer = setTimeout(guarded(ERR, load), 5000);
    return;
  }
  if (!ok()) return;
  answer = r;
  $("#body").hidden = false;
  $("#csv").href = `/api/compare/csv?runs=${encodeURIComponent(ids.join(","))}`;
  $("#links").innerHTML = r.runs.map((run, i) => `<span class="pill"><span class="swatch" style="background:` +
    `${COLORS[i % COLORS.length]}"></span><a href="/result?source=${encodeURIComponent(run.id)}">${esc(run.label)}</a>` +
    `</span>`).join("");
  drawCurves($("#curves"), r.runs, state().x || "epoch");
  settings();
  fidelity();
  const live = r.runs.filter(run => run.updated_s !== null && run.updated_s < 120);
  $("#live").textContent = live.length ? `${live.map(x => x.label).join(", ")} still writing: refreshed every 10 s.` : "";
  if (live.length) timer = setTimeout(guarded(ERR, load), 10000);
}

// ------------------------------------------------------------------------------------------------ settings
function settings() {
  const r = answer, only = $("#only").checked;
  const differ = new Set(r.differ);
  const keys = r.keys.filter(k => !only || differ.has(k));
  $("#diff-what").textContent = r.runs.length < 2 ? "pick a second run to see what differs"
    : `${r.differ.length} of ${r.keys.length} settings differ (marked)`;
  const show = (v) => v === undefined ? "(absent)" : v === null ? "-" : String(v);
  $("#settings").innerHTML = `<thead><tr><th>setting</th>${r.runs.map((run, i) =>
    `<th><span class="swatch" style="background:${COLORS[i % COLORS.length]}"></span>${esc(run.label)}</th>`).join("")}` +
    `</tr></thead><tbody>` + keys.map(k => `<tr class="${differ.has(k) ? "diff" : ""}" data-key="${esc(k)}">` +
    `<td>${esc(k)}</td>${r.runs.map(run => `<td>${esc(show(run.settings[k]))}</td>`).join("")}</tr>`).join("") +
    `</tbody>`;
}

$("#only").addEventListener("change", () => { setState({ only: $("#only").checked ? 1 : null }); if (answer) settings(); });
for (const el of $$("input[name=axis]")) el.addEventListener("change", () => {
  setState({ x: el.value === "epoch" ? null : el.value });
  if (answer) drawCurves($("#curves"), answer.runs, el.value);
});

// ------------------------------------------------------------------------------------------------ fidelity
const METRIC = { params: "parameters", macs: "multiply-adds", neurons: "neurons", test_err: "test error (%)",
  top1_err: "top-1 error (%)", top5_err: "top-5 error (%)", top1_acc: "top-1 accuracy (%)", top5_acc: "top-5 accuracy (%)" };
const value = (row, v) => v === null || v === undefined ? "-" :
  ["params", "macs", "neurons"].includes(row.metric) ? fmt(v) : Number(v).toFixed(2);

async function fidelity() {
  const ok = fresh("fidelity");
  const box = $("#fidelity");
  box.innerHTML = answer.runs.map(run => `<div data-run="${esc(run.id)}"><h3>${esc(run.label)}</h3>` +
    `<p class="muted">measuring…</p></div>`).join("");
  await Promise.all(answer.runs.map(async (run) => {  // each run's own job, side by side
    const el = box.querySelector(`[data-run="${CSS.escape(run.id)}"]`);
    try {
      let r = await get("/api/compare/fidelity", { source: run.id });
      while (r.state === "running") {
        el.querySelector("p").textContent = `evaluating the test set: ${r.job.done.toLocaleString()} of ` +
          `${r.job.total.toLocaleString()} images…`;
        await new Promise(res => setTimeout(res, 500));
        if (!ok()) return;
        const j = await get(`/api/jobs/${r.job.id}`);
        if (j.state === "failed") throw new ApiError(j.message);
        r = j.state === "done" ? await get("/api/compare/fidelity", { source: run.id }) : { state: "running", job: j };
      }
      if (!ok()) return;
      const f = r.result;
      el.innerHTML = `<h3>${esc(run.label)}</h3><table class="grid fid"><thead><tr><th>figure</th><th>published</th>` +
        `<th>ours</th><th>difference</th><th>verdict</th><th class="l">source</th></tr></thead><tbody>` +
        f.rows.map(row => {
          const cls = ["agrees", "equal", "within noise", "better"].includes(row.verdict) ? "good"
            : ["differs", "worse"].includes(row.verdict) ? "bad" : "";
          return `<tr><td>${esc(METRIC[row.metric] || row.metric)}</td><td>${value(row, row.paper)}</td>` +
            `<td>${value(row, row.ours)}</td><td>${row.diff === null ? "" : (row.trained ? (row.diff >= 0 ? "+" : "") +
            row.diff.toFixed(2) + " points" : value(row, row.diff))}</td><td class="${cls}">${esc(row.verdict)}` +
            `${row.noise ? ` (±${row.noise.toFixed(2)})` : ""}</td><td class="l">${esc(row.source)}</td></tr>`;
        }).join("") + `</tbody></table><p class="muted">${esc(f.note)}</p><div class="cmd"></div>`;
      command(el.querySelector(".cmd"), f.command);
    } catch (e) {
      if (!(e instanceof ApiError || e instanceof TypeError)) throw e;
      el.innerHTML = `<h3>${esc(run.label)}</h3><p class="muted">${esc(e.message)}</p>`;
    }
  }));
}

// ----------------------------------------------------------------------------------------- the degradation pair
const CIFAR = ["cifar10", "cifar10_jpeg"];  // the official images, or the JPEG copy where only it is here

function newest(model) {  // the latest CIFAR-10 run of a model (run folders are named model-data-timestamp)
  const found = sources.filter(e => e.model === model && CIFAR.includes(e.data));
  return found.length ? found[found.length - 1] : null;
}

async function cifar() {  // the CIFAR-10 this machine has (the official one first); the server says if neither
  try {
    const here = (await get("/api/train/form")).datasets || [];
    return CIFAR.find(d => here.includes(d)) || "cifar10";
  } catch (e) {
    if (e instanceof ApiError) return "cifar10";
    throw e;
  }
}

async function pair(a, b) {
  const epochs = Number($("#pair-epochs").value), seed = Number($("#pair-seed").value);
  const data = await cifar();
  command("#cmd-pair", [a, b].map(m => `cnnlab train ${m} --data ${data} --epochs ${epochs} --seed ${seed}`)
    .join("\n"));
  const have = [newest(a), newest(b)];
  if (have.every(Boolean)) {
    setState({ runs: have.map(e => e.id).join(",") });
    $("#pair-note").textContent = `Both are here already: ${have.map(e => e.label).join(" and ")}, selected.`;
    return start();
  }
  const ids = [];
  for (const model of [a, b]) {
    let r;
    try {
      r = await post("/api/train/start", { model, data, epochs, seed });
    } catch (e) {
      if (e instanceof ApiError && /no such endpoint/.test(e.message)) {
        throw new ApiError("This lab cannot start trainings from the page (it has no /api/train/start); run the " +
          "two commands shown below, then reload this page.");
      }
      throw e;
    }
    ids.push(r.id);
    pending.add(r.id);
  }
  setState({ runs: ids.join(",") });
  $("#pair-note").textContent = `Started ${a} and ${b} (${epochs} epochs, seed ${seed}); the curves fill in as they ` +
    `train (one training at a time: the second waits for the first).`;
  await start();
}

for (const id of ["#pair-resnet", "#pair-deep"]) {
  const btn = $(id);
  btn.addEventListener("click", guarded(ERR, async () => {
    btn.disabled = true;
    try { await pair(btn.dataset.a, btn.dataset.b); } finally { btn.disabled = false; }
  }));
}

guarded(ERR, start)();
