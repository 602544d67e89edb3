// Receptive fields: the layers and their fields come from the inspector (/api/rf/layers), the box of a unit and
// its effective field from /api/rf/unit and /api/rf/effective; this file draws them where they say.
import { $, $$, header, get, state, setState, guarded, debounce, command, esc, sourceOptions } from "/static/common.js";

header();

const SVGNS = "http://www.w3.org/2000/svg";
let info = null;     // /api/rf/layers
let layer = null;    // the picked row of info.layers
let cell = null;     // [i, j]
let picture = null;  // /api/rf/image
let token = 0;       // the newest unit request: older answers are dropped

const showErr = e => { $("#error").textContent = e ? e.message || String(e) : ""; };

async function fillSources() {
  const select = $("#source");
  const list = await sourceOptions(select, { torchvision: true });
  const models = (await get("/api/rf/models")).models;
  const runs = list.runs.filter(e => !e.problem);
  select.insertAdjacentHTML("beforeend", `<optgroup label="untrained models">` +
    models.map(m => `<option value="model-${esc(m)}">${esc(m)} (untrained)</option>`).join("") + "</optgroup>");
  const st = state();
  const wanted = st.source || (runs.length ? runs[0].id : "model-lenet5");
  if (![...select.options].some(o => o.value === wanted))
    select.insertAdjacentHTML("afterbegin", `<option value="${esc(wanted)}">${esc(wanted)}</option>`);
  select.value = wanted;
  const empty = [...select.options].find(o => o.value === "");
  if (empty) empty.remove();
}

// ---------------------------------------------------------------------------------------------- layers
function defaultLayer(rows) {
  const spread = rows.filter(r => r.output_shape[1] > 2 && r.output_shape[2] > 2);
  return (spread.length ? spread[spread.length - 1] : rows[rows.length - 1]).key;
}

function showLayers() {
  $("#model").textContent = `${info.name} · input ${info.input_size.join("×")}`;
  const pair = v => (v[0] === v[1] ? `${v[0]}` : `${v[0]}×${v[1]}`);
  $("#layers tbody").innerHTML = info.layers.map(r =>
    `<tr data-key="${esc(r.key)}" class="${layer && r.key === layer.key ? "sel" : ""}">` +
    `<td class="l name" style="padding-left:${0.5 + 0.9 * (r.depth - 1)}em">${esc(r.key)}</td>` +
    `<td class="l">${esc(r.type)}</td><td>${r.output_shape.join("×")}</td><td>${pair(r.rf.size)}</td>` +
    `<td>${pair(r.rf.jump)}</td><td>${pair(r.rf.start)}</td></tr>`).join("");
  command("#layers-cmd", info.command);
}

function pickLayer(key, keepCell = false) {
  layer = info.layers.find(r => r.key === key) || info.layers.find(r => r.key === defaultLayer(info.layers));
  const [, oh, ow] = layer.output_shape;
  if (!keepCell || !cell || cell[0] >= oh || cell[1] >= ow) cell = [Math.floor((oh - 1) / 2), Math.floor((ow - 1) / 2)];
  for (const tr of $$("#layers tbody tr")) tr.classList.toggle("sel", tr.dataset.key === layer.key);
  const sel = $(`#layers tbody tr.sel`);
  if (sel) sel.scrollIntoView({ block: "nearest" });
  $("#layer-name").textContent = layer.key;
  $("#channel").max = layer.output_shape[0] - 1;
  setState({ layer: layer.key, cell: cell.join(",") });
  drawGrid();
  loadUnit();
}

// -------------------------------------------------------------------------------------------- the grid
function drawGrid() {
  const [, oh, ow] = layer.output_shape;
  const cs = Math.max(1, Math.min(40, Math.floor(300 / Math.max(oh, ow))));
  const cv = $("#grid"), ctx = cv.getContext("2d");
  cv.width = ow * cs; cv.height = oh * cs;
  Object.assign(cv.dataset, { rows: oh, cols: ow, cellSize: cs });
  ctx.fillStyle = "#eef1f6"; ctx.fillRect(0, 0, cv.width, cv.height);
  ctx.fillStyle = "#e8590c"; ctx.fillRect(cell[1] * cs, cell[0] * cs, cs, cs);
  if (cs >= 6) {
    ctx.strokeStyle = "#c5cad4"; ctx.beginPath();
    for (let r = 0; r <= oh; r++) { ctx.moveTo(0, r * cs + 0.5); ctx.lineTo(ow * cs, r * cs + 0.5); }
    for (let c = 0; c <= ow; c++) { ctx.moveTo(c * cs + 0.5, 0); ctx.lineTo(c * cs + 0.5, oh * cs); }
    ctx.stroke();
  }
  $("#grid-note").textContent = `${oh}×${ow} cells (one of ${layer.output_shape[0]} maps); cell (${cell[0]}, ${cell[1]})`;
}

// ------------------------------------------------------------------------------------ the field drawn
function margins() {  // how far the layer's fields reach past the image: the padding drawn around it
  const [, oh, ow] = layer.output_shape, [, H, W] = info.input_size, { size, jump, start } = layer.rf;
  return [[oh, H, 0], [ow, W, 1]].map(([n, extent, a]) => {
    const lo = start[a] - (size[a] - 1) / 2, hi = start[a] + (n - 1) * jump[a] + (size[a] + 1) / 2;
    return Math.min(Math.ceil(Math.max(0, -lo, hi - extent)), Math.ceil(0.6 * extent));
  });
}

function el(name, attrs, parent) {
  const e = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function frame(id, url, [my, mx]) {
  const [, H, W] = info.input_size, vw = W + 2 * mx, vh = H + 2 * my, px = 340 / Math.max(vw, vh);
  const svg = el("svg", { id, class: "field", viewBox: `${-mx} ${-my} ${vw} ${vh}`, width: Math.round(vw * px),
    height: Math.round(vh * px) });
  el("rect", { x: -mx, y: -my, width: vw, height: vh, fill: "#9aa3b2", "fill-opacity": 0.45 }, svg);
  el("image", { href: url, x: 0, y: 0, width: W, height: H, preserveAspectRatio: "none" }, svg);
  return svg;
}

function rect(svg, id, box, style) {
  return el("rect", { id, x: box.x, y: box.y, width: box.width, height: box.height, "vector-effect": "non-scaling-stroke",
    "data-x": box.x, "data-y": box.y, "data-width": box.width, "data-height": box.height, ...style }, svg);
}

function drawField(unit) {
  const m = margins(), [, oh, ow] = layer.output_shape, { jump, start } = layer.rf;
  const svg = frame("field-svg", picture.url, m);
  if (oh * ow <= 4096) {
    const r = Math.max(info.input_size[1], info.input_size[2]) / 160;
    for (let i = 0; i < oh; i++) for (let j = 0; j < ow; j++)
      el("circle", { cx: start[1] + j * jump[1] + 0.5, cy: start[0] + i * jump[0] + 0.5, r, fill: "#2f6fdf",
        "fill-opacity": 0.55 }, svg);
  }
  rect(svg, "rf-box", unit.box, { fill: "#e8590c", "fill-opacity": 0.12, stroke: "#e8590c", "stroke-width": 2,
    "stroke-dasharray": "5 4" });
  rect(svg, "rf-clip", unit.clipped, { fill: "none", stroke: "#e8590c", "stroke-width": 3 });
  el("circle", { cx: unit.centre[1] + 0.5, cy: unit.centre[0] + 0.5, r: Math.max(info.input_size[1], 16) / 60,
    fill: "#e8590c" }, svg);
  $("#field").replaceChildren(svg);
  const b = unit.box, c = unit.clipped;
  $("#facts").innerHTML = `cell (${unit.cell[0]}, ${unit.cell[1]}) of ${esc(unit.layer)}: centre = start + index × jump = ` +
    `(${layer.rf.start[0]} + ${unit.cell[0]}×${layer.rf.jump[0]}, ${layer.rf.start[1]} + ${unit.cell[1]}×${layer.rf.jump[1]})` +
    ` = (${unit.centre[0]}, ${unit.centre[1]}); field ${b.height}×${b.width} pixels, rows ${b.y}…${b.y + b.height - 1}, ` +
    `columns ${b.x}…${b.x + b.width - 1}` + (unit.in_padding ? `; on the image: rows ${c.y}…${c.y + c.height - 1}, ` +
    `columns ${c.x}…${c.x + c.width - 1}, the rest is padding` : "; all of it on the image");
  command("#unit-cmd", info.command);
}

function drawEffective(unit, erf) {
  const svg = frame("erf-svg", erf.url, margins());
  rect(svg, "erf-clip", unit.clipped, { fill: "none", stroke: "#4dabf7", "stroke-width": 2 });
  if (erf.support) rect(svg, "erf-support", erf.support, { fill: "none", stroke: "#fff", "stroke-width": 1,
    "stroke-dasharray": "2 3" });
  svg.dataset.insideFraction = erf.inside_fraction;
  $("#erf").replaceChildren(svg);
  const inside = erf.inside_fraction == null ? "" : ` ${(100 * erf.inside_fraction).toFixed(1)}% of it lies inside the ` +
    `theoretical field (blue); the dotted box bounds where it is not zero.`;
  $("#erf-what").textContent = `Effective field: ${erf.what}.` + inside;
}

// ---------------------------------------------------------------------------------------------- loading
const loadUnit = debounce(async () => {
  const mine = ++token, source = $("#source").value, params = { source, layer: layer.key, cell: cell.join(",") };
  try {
    showErr(null);
    const unit = await get("/api/rf/unit", params);
    if (mine !== token) return;
    drawField(unit);
    $("#erf").innerHTML = `<p class="muted">computing…</p>`;
    const mode = $("#channel-mode").value;
    const erf = await get("/api/rf/effective", { ...params, channel: mode === "one" ? $("#channel").value : "" });
    if (mine !== token) return;
    drawEffective(unit, erf);
  } catch (e) {
    if (mine === token) { showErr(e); $("#erf").innerHTML = ""; }
  }
}, 120);

const loadImage = async () => {
  const st = state();
  picture = await get("/api/rf/image", { source: $("#source").value, k: st.k || 0 });
  $("#image-label").textContent = `input: ${picture.label}`;
  $("#k-wrap").hidden = !picture.count;
  $("#k").max = Math.max(0, picture.count - 1);
  $("#k").value = picture.k;
};

const loadSource = guarded("#error", async () => {
  const st = state();
  info = null;
  $("#layers tbody").innerHTML = `<tr><td class="l muted" colspan="6">inspecting…</td></tr>`;
  info = await get("/api/rf/layers", { source: $("#source").value });
  await loadImage();
  const key = info.layers.some(r => r.key === st.layer) ? st.layer : defaultLayer(info.layers);
  cell = st.cell ? st.cell.split(",").map(Number) : null;
  layer = info.layers.find(r => r.key === key);
  showLayers();
  pickLayer(key, Boolean(cell) && cell.every(Number.isInteger));
});

// ----------------------------------------------------------------------------------------------- wiring
$("#layers tbody").addEventListener("click", ev => {
  const tr = ev.target.closest("tr[data-key]");
  if (tr && info) pickLayer(tr.dataset.key);
});
$("#grid").addEventListener("click", ev => {
  if (!layer) return;
  const cv = $("#grid"), cs = Number(cv.dataset.cellSize), [, oh, ow] = layer.output_shape;
  const r = cv.getBoundingClientRect();
  const i = Math.floor((ev.clientY - r.top) * (cv.height / r.height) / cs);
  const j = Math.floor((ev.clientX - r.left) * (cv.width / r.width) / cs);
  if (i < 0 || j < 0 || i >= oh || j >= ow) return;
  cell = [i, j];
  setState({ cell: cell.join(",") });
  drawGrid();
  loadUnit();
});
$("#source").addEventListener("change", () => {
  setState({ source: $("#source").value, layer: null, cell: null, k: null });
  loadSource();
});
$("#k").addEventListener("change", guarded("#error", async () => {
  setState({ k: $("#k").value });
  await loadImage();
  if (layer) loadUnit();
}));
const channelChanged = () => {
  $("#channel").hidden = $("#channel-mode").value !== "one";
  setState({ channel: $("#channel-mode").value === "one" ? $("#channel").value : null });
  if (layer) loadUnit();
};
$("#channel-mode").addEventListener("change", channelChanged);
$("#channel").addEventListener("change", channelChanged);

guarded("#error", async () => {
  const st = state();
  if (st.channel !== undefined) { $("#channel-mode").value = "one"; $("#channel").value = st.channel; $("#channel").hidden = false; }
  await fillSources();
  setState({ source: $("#source").value });
  await loadSource();
})();
