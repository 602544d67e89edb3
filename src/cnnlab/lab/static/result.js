// The result page: a run's confusion matrix, a cell's images (most confident mistakes first), one image's
// saliency and Grad-CAM for its true and predicted class, the run's curves and settings. State in the URL:
// source, t and p (the cell: true and predicted class), off (the cell's page), image, x (the curves' axis).
import { $, header, get, state, setState, guarded, esc, command, sourceOptions, ApiError } from "/static/common.js";
import { drawCurves } from "/static/curves.js";

header();
const ERR = "#error";
const PAGE = 24;
let matrix = null;  // the confusion answer shown
const gen = {};
const fresh = (panel) => { gen[panel] = (gen[panel] || 0) + 1; const g = gen[panel]; return () => gen[panel] === g; };
const pct = (p) => (p * 100).toFixed(p >= 0.9995 || p < 0.0005 ? 2 : 1) + "%";

async function start() {
  const sel = $("#source");
  await sourceOptions(sel, { torchvision: false });
  const wanted = state().source;
  if (wanted && [...sel.options].some(o => o.value === wanted && !o.disabled)) sel.value = wanted;
  else if (wanted) throw new ApiError(`no finished run with id ${wanted} under --runs; pick one from the list`);
  if (!sel.value || sel.selectedOptions[0]?.disabled) {
    const first = [...sel.options].find(o => !o.disabled && o.value);
    sel.value = first ? first.value : "";
  }
  if (!sel.value) { $("#headline").textContent = "No trained run here yet: train one on the Train page."; return; }
  setState({ source: sel.value });
  $("#axis").value = state().x || "epoch";
  await loadRun();
}

async function loadRun() {
  const s = state();
  $("#to-compare").href = `/compare?runs=${encodeURIComponent(s.source)}`;
  $("#layout").hidden = true; $("#errors-card").hidden = true; $("#why-card").hidden = true;
  curves().catch(e => showErr(e));
  await confusion();
  if (s.t !== undefined && s.p !== undefined) await cell(Number(s.t), Number(s.p), Number(s.off || 0));
  if (s.image !== undefined) await why(Number(s.image));
}

const showErr = (e) => { $(ERR).textContent = e.message || String(e); };

// ---------------------------------------------------------------------------------------------- the matrix
async function confusion() {
  const ok = fresh("cm");
  const source = state().source;
  let r = await get("/api/result/confusion", { source });
  while (r.state === "running") {  // evaluating the whole split: a background job, polled with its progress
    const job = r.job;
    $("#progress").hidden = false;
    $("#bar").style.width = job.total ? `${(100 * job.done / job.total).toFixed(1)}%` : "0";
    $("#count").textContent = `evaluating: ${job.done.toLocaleString()} of ${job.total.toLocaleString()} images, ` +
      `${job.seconds} s (once: the result is kept in the run folder)`;
    await new Promise(res => setTimeout(res, 400));
    if (!ok()) return;
    const j = await get(`/api/jobs/${job.id}`);
    if (j.state === "failed") { $("#progress").hidden = true; throw new ApiError(j.message); }
    r = j.state === "done" ? await get("/api/result/confusion", { source }) : { state: "running", job: j };
  }
  $("#progress").hidden = true;
  if (!ok()) return;
  matrix = r.result;
  drawMatrix(matrix);
}

function drawMatrix(m) {
  const k = m.classes.length;
  $("#headline").innerHTML = `<span class="big">top-1 ${m.top1.toFixed(2)}%</span>` +
    `<span>top-5 ${m.top5.toFixed(2)}%</span><span class="muted">${esc(m.name)} on the ${esc(m.data)} ` +
    `${esc(m.split)} split, ${m.images.toLocaleString()} images</span>`;
  $("#cm-what").textContent = `Rows: the true class; columns: the class predicted. A cell's colour is its share of ` +
    `its row (the diagonal blue: right; off it red: wrong). The last column is each class's accuracy. Click a ` +
    `cell to see its images.`;
  const s = state();
  const small = k > 20;
  let html = `<thead><tr><th class="axis">true \\ predicted</th>` +
    m.classes.map((c, j) => `<th title="${esc(c)}">${esc(small ? j : c.slice(0, 8))}</th>`).join("") +
    `<th>accuracy</th></tr></thead><tbody>`;
  for (let i = 0; i < k; i++) {
    const row = m.confusion[i], total = m.support[i] || 1;
    html += `<tr><th class="l" title="${esc(m.classes[i])}">${esc(m.classes[i].slice(0, 14))}</th>`;
    for (let j = 0; j < k; j++) {
      const v = row[j], share = v / total;
      const hue = i === j ? "47,111,223" : "211,58,44";
      const alpha = v ? Math.max(0.08, Math.min(1, i === j ? share : Math.sqrt(share) * 1.2)) : 0;
      const dark = alpha > 0.55;
      const sel = String(i) === s.t && String(j) === s.p ? " sel" : "";
      html += `<td class="cell${v ? "" : " zero"}${sel}" data-t="${i}" data-p="${j}" ` +
        `style="background: rgba(${hue},${alpha.toFixed(3)});${dark ? "color:#fff" : ""}" ` +
        `title="true ${esc(m.classes[i])}, predicted ${esc(m.classes[j])}: ${v}">${v}</td>`;
    }
    const acc = m.per_class[i];
    html += `<td class="acc">${acc === null ? "-" : acc.toFixed(1) + "%"}</td></tr>`;
  }
  html += `</tbody>`;
  $("#cm").innerHTML = html;
  command("#cmd-eval", m.command);
  $("#layout").hidden = false;
}

$("#cm").addEventListener("click", guarded(ERR, async (ev) => {
  const td = ev.target.closest("td.cell");
  if (!td) return;
  setState({ t: td.dataset.t, p: td.dataset.p, off: null, image: null });
  $("#why-card").hidden = true;
  drawMatrix(matrix);
  await cell(Number(td.dataset.t), Number(td.dataset.p), 0);
}));

// ------------------------------------------------------------------------------------------------ a cell
async function cell(t, p, offset) {
  const ok = fresh("cell");
  const r = await get("/api/result/errors", { source: state().source, true: t, pred: p, offset, count: PAGE });
  if (!ok()) return;
  $("#errors-card").hidden = false;
  const right = t === p;
  $("#errors-title").textContent = right ? `Class ${r.true_class}: right` : `True ${r.true_class}, predicted ${r.pred_class}`;
  $("#errors-what").textContent = r.total === 0 ? "No image in this cell." : right
    ? `${r.total.toLocaleString()} ${r.split} images of ${r.true_class} classified right, the least confident first ` +
      `(the probability the network gave its answer). Click one to see why.`
    : `${r.total.toLocaleString()} ${r.split} images of ${r.true_class} taken for ${r.pred_class}, the most confident ` +
      `mistakes first (under each: the probability of the wrong class, then of the true one). Click one to see why.`;
  $("#paging").hidden = r.total <= r.count;
  $("#range").textContent = r.total ? `${r.offset + 1}–${Math.min(r.offset + r.count, r.total)} of ${r.total}` : "";
  $("#prev").disabled = r.offset === 0;
  $("#next").disabled = r.offset + r.count >= r.total;
  $("#prev").onclick = guarded(ERR, () => page(Math.max(0, r.offset - r.count)));
  $("#next").onclick = guarded(ERR, () => page(r.offset + r.count));
  const img = state().image;
  $("#thumbs").innerHTML = r.items.map(it =>
    `<figure data-index="${it.index}" class="${String(it.index) === img ? "sel" : ""}" ` +
    `title="${esc(r.split)} image ${it.index}: ${esc(r.pred_class)} ${pct(it.p_predicted)}, ${esc(r.true_class)} ` +
    `${pct(it.p_true)}"><img class="px" src="${it.url}" alt="image ${it.index}"><figcaption>#${it.index}<br>` +
    (right ? `${pct(it.p_predicted)}` : `${pct(it.p_predicted)} · ${pct(it.p_true)}`) + `</figcaption></figure>`).join("");
}

async function page(offset) {
  setState({ off: offset || null });
  await cell(Number(state().t), Number(state().p), offset);
}

$("#thumbs").addEventListener("click", guarded(ERR, async (ev) => {
  const fig = ev.target.closest("figure");
  if (!fig) return;
  setState({ image: fig.dataset.index });
  for (const f of $("#thumbs").querySelectorAll("figure")) f.classList.toggle("sel", f === fig);
  await why(Number(fig.dataset.index));
}));

// -------------------------------------------------------------------------------------------------- why
async function why(i) {
  const ok = fresh("why");
  const r = await get("/api/result/why", { source: state().source, image: i });
  if (!ok()) return;
  $("#why-card").hidden = false;
  $("#why-what").innerHTML = `${esc(r.split)} image ${r.index} (<a href="${r.download}" download="${esc(r.file)}">` +
    `${esc(r.file)}</a>): truly <b>${esc(r.true_class)}</b>, predicted <b>${esc(r.predicted_class)}</b>. Saliency: ` +
    `how much each pixel moves the class's score; Grad-CAM at ${esc(r.layer)}: where the evidence for the class lies.`;
  const el = $("#why");
  el.innerHTML = `<figure><img class="px" src="${r.url}" alt="the image"><figcaption>input</figcaption></figure>` +
    r.panels.map(p => `<div class="role" data-role="${p.role}"><h3>${p.role === "true" ? "true class" :
      "predicted class"}: ${esc(p.class)} (${pct(p.probability)})</h3><div class="why">` +
      `<figure><img class="px saliency" src="${p.saliency}" alt="saliency"><figcaption>saliency</figcaption></figure>` +
      `<figure><img class="gradcam" src="${p.gradcam}" alt="Grad-CAM"><figcaption>Grad-CAM</figcaption></figure>` +
      `</div><div class="cmd-s"></div><div class="cmd-g"></div></div>`).join("");
  r.panels.forEach((p, n) => {
    const box = el.querySelectorAll(".role")[n];
    command(box.querySelector(".cmd-s"), p.commands.saliency);
    command(box.querySelector(".cmd-g"), p.commands.gradcam);
  });
  if (r.panels.length === 1) el.insertAdjacentHTML("beforeend",
    `<p class="muted">Classified right: the true and the predicted class are one.</p>`);
}

// -------------------------------------------------------------------------------------------- curves, settings
async function curves() {
  const ok = fresh("curves");
  const r = await get("/api/compare", { runs: state().source });
  if (!ok()) return;
  const run = r.runs[0];
  $("#curves-card").hidden = false;
  drawCurves($("#curves"), r.runs, state().x || "epoch");
  command("#cmd-train", run.command);
  $("#settings").innerHTML = Object.entries(run.settings).map(([k, v]) =>
    `<dt>${esc(k)}</dt><dd>${esc(v === null ? "-" : v)}</dd>`).join("");
  curves.last = r;
}

$("#axis").addEventListener("change", guarded(ERR, () => {
  setState({ x: $("#axis").value === "epoch" ? null : $("#axis").value });
  if (curves.last) drawCurves($("#curves"), curves.last.runs, $("#axis").value);
}));

$("#source").addEventListener("change", guarded(ERR, async () => {
  setState({ source: $("#source").value, t: null, p: null, off: null, image: null });
  await loadRun();
}));

guarded(ERR, start)();
