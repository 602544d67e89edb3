// cnnlab lab: what every page shares: the header, JSON calls, the state kept in the URL, teacher mode.
export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

export const PAGES = [["/", "Lab"], ["/zoo", "Zoo"], ["/model", "Model"], ["/rf", "Receptive fields"],
  ["/playground", "Conv arithmetic"], ["/explorer", "Image explorer"], ["/draw", "Draw a digit"],
  ["/train", "Train"], ["/result", "Results"], ["/compare", "Compare runs"]];

// The page's state lives in the URL's query string, so a view can be linked (and reloads as it was).
export function state() { return Object.fromEntries(new URLSearchParams(location.search)); }
export function setState(changes, { push = false } = {}) {
  const q = new URLSearchParams(location.search);
  for (const [k, v] of Object.entries(changes)) {
    if (v === null || v === undefined || v === "") q.delete(k); else q.set(k, String(v));
  }
  const url = location.pathname + (q.toString() ? "?" + q : "");
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
}
export const teacher = () => ["1", "true", "yes"].includes(state().teacher);

export function header() {
  const h = document.createElement("header");
  h.className = "lab";
  const teach = teacher() ? "?teacher=1" : "";
  h.innerHTML = `<span class="brand">cnnlab</span>` + PAGES.map(([href, name]) =>
    `<a href="${href}${teach}" class="${location.pathname === href ? "here" : ""}">${name}</a>`).join("");
  document.body.prepend(h);
  if (teacher()) document.body.classList.add("teacher");
}

export class ApiError extends Error {}

async function answer(r) {
  let body;
  try { body = await r.json(); } catch { body = { error: `the server answered ${r.status} without JSON` }; }
  if (!r.ok || body.error) throw new ApiError(body.error || `the server answered ${r.status}`);
  return body;
}
export async function get(path, params = {}) {
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== ""));
  return answer(await fetch(path + (q.toString() ? "?" + q : "")));
}
export async function post(path, body, type = "application/json") {
  const data = type === "application/json" ? JSON.stringify(body) : body;
  return answer(await fetch(path, { method: "POST", headers: { "content-type": type }, body: data }));
}

// One place per page for a user's mistake or a failed request: shown, never thrown into the console.
export function showError(el, err) {
  el = typeof el === "string" ? $(el) : el;
  if (el) el.textContent = err ? (err.message || String(err)) : "";
}
export function guarded(el, fn) {
  return async (...args) => {
    try { showError(el, null); return await fn(...args); }
    catch (e) { if (e instanceof ApiError || e instanceof TypeError) showError(el, e); else throw e; }
  };
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

export function fmt(n) {  // 1234567 -> "1.23M", as cnnlab's tables write it
  if (n === null || n === undefined) return "";
  const a = Math.abs(n);
  for (const [d, s] of [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]]) if (a >= d) return (n / d).toFixed(2) + s;
  return String(n);
}
export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// The cnnlab command that writes the same picture or table as a file: shown under each panel.
export function command(el, text) {
  el = typeof el === "string" ? $(el) : el;
  if (!el) return;
  el.className = "command"; el.textContent = text || ""; el.hidden = !text;
}

// A source picker: the runs under --runs, then torchvision's weights (and untrained models when asked).
export async function sourceOptions(select, { torchvision = true, filter = null } = {}) {
  const list = await get("/api/sources");
  const opts = [];
  const keep = e => !filter || filter(e);
  for (const e of list.runs.filter(keep)) {
    const acc = e.top1 != null ? ` - ${e.top1.toFixed(2)}% after ${e.epochs} epochs` : "";
    opts.push(`<option value="${esc(e.id)}" ${e.problem ? "disabled" : ""}>${esc(e.label)} (${esc(e.model)}` +
      `${e.data ? ", " + esc(e.data) : ""})${acc}${e.problem ? " - " + esc(e.problem) : ""}</option>`);
  }
  if (torchvision) for (const e of list.torchvision.filter(keep))
    opts.push(`<option value="${esc(e.id)}">${esc(e.label)}</option>`);
  select.innerHTML = opts.join("") || `<option value="">(no runs under --runs)</option>`;
  return list;
}
