// The image explorer: one image through one network, panel by panel. Its state (source, image, layer, class,
// Grad-CAM layer, filter layer, top-9 layer and unit, strip page) lives in the URL.
import { $, header, get, post, state, setState, guarded, esc, command, sourceOptions, ApiError }
  from "/static/common.js";

header();
const ERR = "#error";
const PAGE = 24;
let current = null;  // the predict answer of the image shown
const gen = {};  // per panel: the latest request, so a slow old answer never overwrites a new one
const fresh = (panel) => { gen[panel] = (gen[panel] || 0) + 1; const g = gen[panel]; return () => gen[panel] === g; };

const base = () => ({ source: state().source, image: state().image });
const options = (sel, items, chosen) => {
  sel.innerHTML = items.map(([v, t]) => `<option value="${esc(v)}">${esc(t)}</option>`).join("");
  if (chosen !== undefined && items.some(([v]) => String(v) === String(chosen))) sel.value = chosen;
};
const pct = (p) => (p * 100).toFixed(p >= 0.9995 || p < 0.0001 ? 2 : 1) + "%";
const fmtv = (v) => Math.abs(v) >= 100 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(2) : v.toFixed(3);

// ------------------------------------------------------------------------------------------- source & strip
async function start() {
  const sel = $("#source");
  await sourceOptions(sel);
  const wanted = state().source;
  if (wanted && ![...sel.options].some(o => o.value === wanted)) {  // model-NAME (untrained) given by URL
    sel.insertAdjacentHTML("beforeend", `<option value="${esc(wanted)}">${esc(wanted)}</option>`);
  }
  if (wanted) sel.value = wanted;
  if (!sel.value) { const first = [...sel.options].find(o => !o.disabled && o.value); if (first) sel.value = first.value; }
  if (!sel.value) return;
  setState({ source: sel.value });
  await loadSource();
}

async function loadSource() {
  $("#strip").innerHTML = ""; $("#strip-note").textContent = ""; $("#paging").hidden = true;
  $("#panels").hidden = true; $("#picked").hidden = true;
  await strip(Number(state().off || 0));
  if (state().image) await showImage();
}

async function strip(offset) {
  const s = state();
  const r = await get("/api/explorer/images", { source: s.source, offset, count: PAGE });
  if (r.note) { $("#strip-note").textContent = r.note; return; }  // no test images here: uploads only
  setState({ off: offset || null });
  $("#paging").hidden = false;
  $("#range").textContent = `${r.split} images ${r.offset}–${Math.min(r.offset + r.count, r.total) - 1} of ${r.total}`;
  $("#prev").disabled = r.offset === 0;
  $("#next").disabled = r.offset + r.count >= r.total;
  $("#strip").innerHTML = r.images.map(im =>
    `<img src="${im.url}" data-index="${im.index}" class="px ${String(im.index) === state().image ? "sel" : ""}" ` +
    `title="${esc(r.split)} image ${im.index}" alt="image ${im.index}">`).join("");
  if (!state().image && r.images.length) setState({ image: r.images[0].index });
}

$("#strip").addEventListener("click", guarded(ERR, async (ev) => {
  const i = ev.target.dataset && ev.target.dataset.index;
  if (i === undefined) return;
  for (const im of $("#strip").querySelectorAll("img")) im.classList.toggle("sel", im === ev.target);
  setState({ image: i, cls: null });
  await showImage();
}));
$("#prev").addEventListener("click", guarded(ERR, () => strip(Math.max(0, Number(state().off || 0) - PAGE))));
$("#next").addEventListener("click", guarded(ERR, () => strip(Number(state().off || 0) + PAGE)));
$("#source").addEventListener("change", guarded(ERR, async () => {
  setState({ source: $("#source").value, image: null, off: null, layer: null, cls: null, gcl: null, flayer: null,
             t9l: null, unit: null });
  current = null;
  await loadSource();
}));

$("#file").addEventListener("change", guarded(ERR, async () => {
  const file = $("#file").files[0];
  if (!file) return;
  const type = file.type.startsWith("image/") ? file.type : "application/octet-stream";
  const q = new URLSearchParams({ name: file.name, source: state().source || "" });
  $("#file").value = "";
  const up = await post("/api/explorer/upload?" + q, file, type);
  for (const im of $("#strip").querySelectorAll("img")) im.classList.remove("sel");
  setState({ image: up.id, cls: null });
  await showImage();
}));

// ------------------------------------------------------------------------------------------------ the image
async function showImage() {
  const ok = fresh("image");
  const p = await get("/api/explorer/predict", base());
  if (!ok()) return;
  current = p;
  const im = p.image;
  $("#picked").hidden = false; $("#panels").hidden = false;
  $("#image").src = im.url;
  $("#image-name").innerHTML = `<b>${esc(im.name)}</b>` + (im.size ? ` <span class="muted">${im.size.join("x")}</span>` : "");
  $("#image-truth").textContent = im.truth != null ? `label: ${im.truth}` : "";
  $("#image-note").textContent = im.note || "";
  $("#image-file").innerHTML = im.download
    ? `The commands below read an image file: <a href="${im.download}" download="${esc(im.file)}">save this image as ` +
      `${esc(im.file)}</a> first (the test set's own pixels; the CLI prepares it as the network saw it).`
    : `The commands below read your file, ${esc(im.file)}.`;
  top5(p);
  const s = state();
  const spatial = p.layers.map(l => [l.name, `${l.name} · ${l.type} · ${l.shape.join("x")}`]);
  options($("#layer"), spatial, s.layer || p.default_layer);
  options($("#gcl"), spatial, s.gcl || p.gradcam_layer);
  options($("#t9l"), spatial, s.t9l || s.layer || p.default_layer);
  options($("#target"), [[-1, `predicted: ${p.classes[p.predicted]}`],
    ...p.classes.map((c, i) => [i, `${i}: ${c}`])], s.cls ?? -1);
  $("#unit").value = s.unit || 0;
  await Promise.all([features(), attribution(), filters(), s.unit !== undefined && s.t9l ? top9() : null]);
}

function top5(p) {
  $("#top5").innerHTML = p.top5.map(t =>
    `<div class="bar"><span title="class ${t.index}">${esc(t.class)}</span>` +
    `<div><div class="fill" style="width:${(t.p * 100).toFixed(2)}%"></div></div><span>${pct(t.p)}</span></div>`).join("");
  command("#cmd-predict", p.command);
}

async function features() {
  const ok = fresh("features");
  const layer = $("#layer").value;
  const f = await get("/api/explorer/features", { ...base(), layer });
  if (!ok()) return;
  const [c, h, w] = f.shape;
  $("#maps-what").textContent = `${c} channels of ${h}x${w}`;
  $("#lo").textContent = fmtv(f.lo); $("#hi").textContent = fmtv(f.hi); $("#colorbar").src = f.legend;
  const tile = Math.max(40, Math.min(112, w * 4));
  $("#maps").style.setProperty("--tile", tile + "px");
  const unit = state().t9l === layer ? Number(state().unit) : -1;
  $("#maps").innerHTML = f.maps.map((u, k) =>
    `<figure data-channel="${k}" class="${k === unit ? "sel" : ""}" title="channel ${k}"><img class="px" src="${u}" ` +
    `alt="channel ${k}"><figcaption>${k}</figcaption></figure>`).join("");
  command("#cmd-features", f.command);
}

async function attribution() {
  const ok = fresh("attribution");
  const target = Number($("#target").value);
  const a = await get("/api/explorer/attribution", { ...base(), target: target >= 0 ? target : null,
                                                     layer: $("#gcl").value });
  if (!ok()) return;
  $("#attr-image").src = a.image; $("#saliency").src = a.saliency; $("#gradcam").src = a.gradcam;
  $("#gradcam-cap").textContent = `Grad-CAM at ${a.layer}`;
  $("#attr-what").textContent = `class ${a.target} (${a.class}): probability ${pct(a.probability)}` +
    (a.target === a.predicted ? ", the predicted class" : `; the network predicts ${current ? current.classes[a.predicted] : a.predicted}`);
  command("#cmd-saliency", a.commands.saliency); command("#cmd-gradcam", a.commands.gradcam);
}

async function filters() {
  const ok = fresh("filters");
  const f = await get("/api/explorer/filters", { source: state().source, layer: state().flayer });
  if (!ok()) return;
  options($("#flayer"), f.conv_layers.map(c => [c, c]), f.layer);
  $("#filters").src = f.url;
  $("#filters-what").textContent = `${f.weight_shape.join("x")} · ` +
    ({ rgb: "one colour tile per kernel", grey: "one grey tile per kernel",
       slices: "one row per kernel, one tile per input channel" })[f.kind];
  $("#filters-note").textContent = f.note;
  command("#cmd-filters", f.command);
}

async function top9() {
  const ok = fresh("top9");
  const s = state();
  const body = { source: s.source, layer: $("#t9l").value, channel: Number($("#unit").value) };
  $("#patches").innerHTML = ""; $("#t9-what").textContent = "";
  let r = await post("/api/explorer/top9", body);
  const computed = r.state === "running";
  while (r.state === "running") {  // a background job: poll it, showing its progress
    $("#t9-progress").hidden = false;
    const job = r.job;
    $("#t9-bar").style.width = job.total ? `${(100 * job.done / job.total).toFixed(1)}%` : "0";
    $("#t9-count").textContent = `${job.done.toLocaleString()} of ${job.total.toLocaleString()} images, ${job.seconds} s`;
    await new Promise(res => setTimeout(res, 400));
    if (!ok()) return;
    const j = await get(`/api/jobs/${job.id}`);
    if (j.state === "failed") { $("#t9-progress").hidden = true; throw new ApiError(j.message); }
    r = j.state === "done" ? await post("/api/explorer/top9", body) : { state: "running", job: j };
  }
  $("#t9-progress").hidden = true;
  if (!ok()) return;
  const t = r.result;
  $("#t9-what").textContent = `channel ${t.channel} of ${t.layer} (${t.channels} channels): the ${t.patches.length} ` +
    `${t.split} images of ${t.data} (of ${t.images.toLocaleString()}) where its maximum is highest, cut to its ` +
    `receptive field (${t.box.join("x")} pixels)` + (t.cached && !computed ? "; from the run's cache" : "");
  $("#patches").innerHTML = t.patches.map((u, i) =>
    `<figure data-index="${t.indices[i]}" title="test image ${t.indices[i]} (label ${esc(t.labels[i])}): ` +
    `max ${fmtv(t.values[i])}"><img class="px" src="${u}" alt="patch ${i}"><figcaption>#${t.indices[i]}<br>` +
    `${fmtv(t.values[i])}</figcaption></figure>`).join("");
  command("#cmd-top9", t.command);
}

// ------------------------------------------------------------------------------------------------- controls
$("#layer").addEventListener("change", guarded(ERR, () => { setState({ layer: $("#layer").value }); return features(); }));
$("#gcl").addEventListener("change", guarded(ERR, () => { setState({ gcl: $("#gcl").value }); return attribution(); }));
$("#target").addEventListener("change", guarded(ERR, () => {
  const v = Number($("#target").value);
  setState({ cls: v >= 0 ? v : null });
  return attribution();
}));
$("#flayer").addEventListener("change", guarded(ERR, () => { setState({ flayer: $("#flayer").value }); return filters(); }));
const findTop9 = guarded(ERR, () => { setState({ t9l: $("#t9l").value, unit: $("#unit").value }); return top9(); });
$("#find").addEventListener("click", findTop9);
$("#maps").addEventListener("click", (ev) => {
  const fig = ev.target.closest("figure");
  if (!fig) return;
  for (const f of $("#maps").querySelectorAll("figure")) f.classList.toggle("sel", f === fig);
  $("#t9l").value = $("#layer").value; $("#unit").value = fig.dataset.channel;
  findTop9();
});
$("#patches").addEventListener("click", guarded(ERR, async (ev) => {
  const fig = ev.target.closest("figure");
  if (!fig) return;
  setState({ image: fig.dataset.index, cls: null, off: Math.floor(fig.dataset.index / PAGE) * PAGE });
  await strip(Number(state().off || 0));
  await showImage();
}));

guarded(ERR, start)();
