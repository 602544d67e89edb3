// cnnlab lab: the network as a graph in plain SVG. The server gives nodes (layers and the operations that
// merge branches), groups (modules with children) and edges with their tensor shapes (/api/models/NAME/graph);
// here a group is collapsed into one node or expanded into its members, and the visible graph is laid out
// top to bottom in layers (longest path from the input, long edges routed through dummy points so that a
// skip connection runs beside the block it skips, parallel branches side by side).
import { esc } from "/static/common.js";

const GAP_Y = 46, SEP = 22, DUMMY_W = 10, MAX_DUMMIES = 4000;
const shapeText = s => (s || []).join("x");

// What the server sent, indexed: each node's and group's chain of enclosing groups (outermost first).
export function prepare(data) {
  const groups = new Map(data.groups.map(g => [g.id, { ...g, members: 0 }]));
  const chain = g => { const out = []; for (let p = g; p != null; p = groups.get(p).parent) out.unshift(p); return out; };
  for (const g of groups.values()) { g.chain = chain(g.parent); g.level = g.chain.length; }
  for (const n of data.nodes) n.chain = n.group == null ? [] : chain(n.group);
  for (const n of data.nodes) if (n.group != null) groups.get(n.group).members++;
  for (const g of groups.values()) if (g.parent != null) { groups.get(g.parent).members++; groups.get(g.parent).nested = true; }
  const fanIn = new Map();
  for (const e of data.edges) fanIn.set(e.to, (fanIn.get(e.to) || 0) + 1);
  for (const n of data.nodes) if (n.kind === "op" && n.group != null && fanIn.get(n.id) > 1) groups.get(n.group).merge = true;
  const byRow = new Map();
  for (const n of data.nodes) if (n.row != null) byRow.set(n.row, n);
  return { ...data, groups, byRow };
}

// The representative of a chain under `expanded`: the outermost collapsed group, or null (all expanded).
function collapsedIn(chain, expanded) {
  for (const g of chain) if (!expanded.has(g)) return g;
  return null;
}

// The visible graph: real nodes whose groups are all expanded, one node per outermost collapsed group,
// and the edges between them (edges inside a collapsed group vanish; parallel duplicates merge).
export function visible(G, expanded) {
  const nodes = new Map(), edges = new Map(), boxes = [];
  const keyOf = n => { const g = collapsedIn(n.chain, expanded); return g == null ? "n" + n.id : "g" + g; };
  for (const n of G.nodes) {
    const key = keyOf(n);
    if (nodes.has(key)) continue;
    if (key[0] === "n") nodes.set(key, { key, kind: n.kind, label: n.label, sub: n.type, node: n, row: n.row, order: n.id });
    else {
      const g = G.groups.get(+key.slice(1));
      nodes.set(key, { key, kind: "group", label: g.name, sub: g.type, group: g, row: g.id, order: n.id,
        io: `${g.inputs.map(shapeText).join(", ")} → ${g.outputs.map(shapeText).join(", ")}` });
    }
  }
  for (const e of G.edges) {
    const a = keyOf(G.nodes[e.from]), b = keyOf(G.nodes[e.to]);
    if (a === b) continue;
    const k = `${a}|${b}|${shapeText(e.shape)}`;
    if (!edges.has(k)) edges.set(k, { from: a, to: b, shape: e.shape });
  }
  for (const g of G.groups.values()) if (expanded.has(g.id) && g.chain.every(p => expanded.has(p))) boxes.push(g);
  return { nodes: [...nodes.values()].sort((x, y) => x.order - y.order), edges: [...edges.values()], boxes };
}

// The groups to expand by default, level by level from the outside, as long as the graph stays under `limit`
// nodes: at each level first the blocks where branches merge (a residual block, an Inception module), then
// those holding other blocks, then the plain ones (conv-BN-ReLU); the first that does not fit ends it, so a
// level is never half open in a way that hides the structure (ResNet-50: its stages open, its blocks closed).
export function defaultExpanded(G, limit = 90) {
  const expanded = new Set(), all = [...G.groups.values()];
  const kind = g => g.merge ? 0 : g.nested ? 1 : 2;
  const levels = Math.max(0, ...all.map(g => g.level + 1));
  for (let level = 0; level < levels; level++) {
    for (let k = 0; k < 3; k++) {
      const batch = all.filter(g => g.level === level && kind(g) === k && g.chain.every(p => expanded.has(p)));
      if (!batch.length) continue;
      const trial = new Set([...expanded, ...batch.map(g => g.id)]);
      if (visible(G, trial).nodes.length > limit) return expanded;
      batch.forEach(g => expanded.add(g.id));
    }
  }
  return expanded;
}

function size(v) {
  const chars = Math.max(v.label.length, (v.sub || "").length * 0.85, v.io ? v.io.length * 0.8 : 0);
  if (v.kind === "op" || v.kind === "input" || v.kind === "output") return [Math.max(56, chars * 7.2 + 22), 26];
  return [Math.max(84, chars * 7.2 + (v.kind === "group" ? 36 : 20)), v.kind === "group" ? 50 : 36];
}

// Pool-adjacent-violators: the x positions closest (weighted least squares) to `want` that keep the layer's
// order with at least `gap[i]` between the centres of i and i+1.
function place(want, weight, gap) {
  const n = want.length, off = [0];
  for (let i = 1; i < n; i++) off.push(off[i - 1] + gap[i - 1]);
  const blocks = [];
  for (let i = 0; i < n; i++) {
    blocks.push({ sum: (want[i] - off[i]) * weight[i], w: weight[i], count: 1 });
    while (blocks.length > 1) {
      const b = blocks[blocks.length - 1], a = blocks[blocks.length - 2];
      if (a.sum / a.w <= b.sum / b.w) break;
      blocks.pop(); a.sum += b.sum; a.w += b.w; a.count += b.count;
    }
  }
  const x = [];
  for (const b of blocks) for (let k = 0; k < b.count; k++) x.push(b.sum / b.w + off[x.length]);
  return x;
}

// A layered layout: rank by longest path, dummy points on long edges, barycentric ordering, then x positions
// pulled towards the neighbours above and below. Returns positions and each edge's polyline.
export function layout(vis) {
  const V = vis.nodes.map(v => { const [w, h] = size(v); return { ...v, w, h, up: [], down: [] }; });
  const index = new Map(V.map((v, i) => [v.key, i]));
  const succ = V.map(() => []), indeg = V.map(() => 0);
  const E = vis.edges.map(e => ({ ...e, a: index.get(e.from), b: index.get(e.to) }));
  for (const e of E) { succ[e.a].push(e.b); indeg[e.b]++; }
  const rank = V.map(() => 0), queue = V.map((_, i) => i).filter(i => !indeg[i]);
  for (let q = 0; q < queue.length; q++) {
    const u = queue[q];
    for (const v of succ[u]) { rank[v] = Math.max(rank[v], rank[u] + 1); if (!--indeg[v]) queue.push(v); }
  }
  V.forEach((v, i) => { v.rank = rank[i]; v.weight = 1; });
  const span = E.reduce((s, e) => s + Math.max(0, rank[e.b] - rank[e.a] - 1), 0);
  const maxSpan = span > MAX_DUMMIES ? 3 : Infinity;  // a fully expanded DenseNet: only short detours
  for (const e of E) {
    let prev = e.a;
    e.chain = [e.a];
    if (rank[e.b] - rank[e.a] - 1 <= maxSpan) {
      for (let r = rank[e.a] + 1; r < rank[e.b]; r++) {
        V.push({ key: "d" + V.length, kind: "dummy", w: DUMMY_W, h: 0, rank: r, up: [prev], down: [], weight: 0.4,
                 order: V[e.a].order + 0.5 });
        V[prev].down.push(V.length - 1);
        prev = V.length - 1;
        e.chain.push(prev);
      }
      V[prev].down.push(e.b); V[e.b].up.push(prev);
    }
    e.chain.push(e.b);
  }
  const L = Math.max(0, ...V.map(v => v.rank)) + 1;
  const layers = Array.from({ length: L }, () => []);
  V.forEach((v, i) => layers[v.rank].push(i));
  for (const layer of layers) layer.sort((i, j) => V[i].order - V[j].order);
  const pos = new Float64Array(V.length);
  const setPos = () => layers.forEach(layer => layer.forEach((v, k) => { pos[v] = k; }));
  setPos();
  const bary = (list, fallback) => list.length ? list.reduce((s, u) => s + pos[u], 0) / list.length : fallback;
  for (let it = 0; it < 6; it++) {  // barycentric ordering, down then up
    const down = it % 2 === 0;
    for (let r = down ? 1 : L - 2; down ? r < L : r >= 0; r += down ? 1 : -1) {
      const key = new Map(layers[r].map(v => [v, bary(down ? V[v].up : V[v].down, pos[v])]));
      layers[r].sort((i, j) => key.get(i) - key.get(j) || pos[i] - pos[j]);
      layers[r].forEach((v, k) => { pos[v] = k; });
    }
  }
  const x = new Float64Array(V.length);
  for (const layer of layers) {
    let acc = 0;
    layer.forEach(v => { x[v] = acc + V[v].w / 2; acc += V[v].w + SEP; });
    layer.forEach(v => { x[v] -= acc / 2; });
  }
  for (let it = 0; it < 8; it++) {  // pull towards the neighbours: real ones count more than dummy points
    const down = it % 2 === 0;
    for (let r = down ? 1 : L - 2; down ? r < L : r >= 0; r += down ? 1 : -1) {
      const layer = layers[r];
      const want = layer.map(v => {
        const nb = down ? V[v].up : V[v].down;
        if (!nb.length) return x[v];
        let s = 0, w = 0;
        for (const u of nb) { const k = V[u].kind === "dummy" ? 0.3 : 1; s += k * x[u]; w += k; }
        return s / w;
      });
      const gap = layer.slice(0, -1).map((v, k) => (V[v].w + V[layer[k + 1]].w) / 2 + SEP);
      place(want, layer.map(v => V[v].weight), gap).forEach((xx, k) => { x[layer[k]] = xx; });
    }
  }
  const minX = Math.min(...V.map((v, i) => x[i] - v.w / 2));
  // room for the frames of open blocks: a header above the rank where a block starts, a margin below its end
  const open = new Set(vis.boxes.map(g => g.id)), first = new Map(), last = new Map();
  for (const v of V) {
    if (v.kind === "dummy") continue;
    for (const g of (v.node || v.group).chain) if (open.has(g)) {
      first.set(g, Math.min(first.get(g) ?? Infinity, v.rank)); last.set(g, Math.max(last.get(g) ?? -1, v.rank));
    }
  }
  const above = new Array(L).fill(0), below = new Array(L).fill(0);
  for (const r of first.values()) above[r] += 22;
  for (const r of last.values()) below[r] += 8;
  const ys = [];
  let y = 34;
  layers.forEach((layer, r) => {
    const h = Math.max(0, ...layer.map(v => V[v].h));
    y += above[r]; ys.push(y + h / 2); y += h + GAP_Y + below[r];
  });
  V.forEach((v, i) => { v.x = x[i] - minX + 30; v.y = ys[v.rank]; });
  const width = Math.max(...V.map(v => v.x + v.w / 2)) + 120;
  const edges = E.map(e => {
    const pts = e.chain.map((i, k) => {
      const v = V[i];
      if (k === 0) return [v.x, v.y + v.h / 2];
      if (k === e.chain.length - 1) return [v.x, v.y - v.h / 2];
      return [v.x, v.y];
    });
    return { ...e, pts };
  });
  return { nodes: V.filter(v => v.kind !== "dummy"), edges, width, height: y };
}

function path(pts) {
  let d = `M${pts[0][0].toFixed(1)},${pts[0][1].toFixed(1)}`;
  for (let k = 1; k < pts.length; k++) {
    const [x0, y0] = pts[k - 1], [x1, y1] = pts[k], m = (y1 - y0) / 2;
    d += ` C${x0.toFixed(1)},${(y0 + m).toFixed(1)} ${x1.toFixed(1)},${(y1 - m).toFixed(1)} ${x1.toFixed(1)},${y1.toFixed(1)}`;
  }
  return d;
}

// A frame's title within `room` pixels: the module's own name (with its parent's where it is a number, as in
// layer1.0), then its type if there is room.
function boxLabel(g, room) {
  const parts = g.name.split(".");
  let name = parts.pop();
  while (/^\d+$/.test(name) && parts.length) name = parts.pop() + "." + name;
  const full = `${name} · ${g.type}`;
  return full.length * 6.2 <= room ? full : name;
}

// The SVG of a laid-out graph; `boxes` are the expanded groups, drawn around their visible members.
export function svg(lay, boxes, G) {
  const at = new Map(lay.nodes.map(v => [v.key, v]));
  const parts = [];
  const extent = new Map();  // group id -> [x0, y0, x1, y1] of what is drawn inside it
  const grow = (g, box) => {
    const e = extent.get(g);
    extent.set(g, e ? [Math.min(e[0], box[0]), Math.min(e[1], box[1]), Math.max(e[2], box[2]), Math.max(e[3], box[3])] : box);
  };
  for (const v of lay.nodes) {
    const chain = v.node ? v.node.chain : v.group.chain;
    for (const g of chain) grow(g, [v.x - v.w / 2, v.y - v.h / 2, v.x + v.w / 2, v.y + v.h / 2]);
  }
  const shown = boxes.filter(g => extent.has(g.id)).sort((a, b) => b.level - a.level);
  for (const g of shown) {  // innermost first, so an outer box is padded around the inner ones
    const e = extent.get(g.id), pad = 8;
    const b = [e[0] - pad, e[1] - pad - 14, e[2] + pad, e[3] + pad];
    extent.set(g.id, b);
    if (g.parent != null && extent.has(g.parent)) grow(g.parent, b);
  }
  for (const g of shown.slice().reverse()) {
    const [x0, y0, x1, y1] = extent.get(g.id);
    parts.push(`<g class="box" data-group="${g.id}" data-row="${g.id}"><rect x="${x0}" y="${y0}" width="${x1 - x0}" ` +
      `height="${y1 - y0}" rx="8"/><text class="toggle control" data-toggle="${g.id}" x="${x0 + 6}" y="${y0 + 12}">⊟</text>` +
      `<text class="boxlabel" x="${x0 + 22}" y="${y0 + 12}"><title>${esc(g.name)} (${esc(g.type)})</title>` +
      `${esc(boxLabel(g, x1 - x0 - 28))}</text></g>`);
  }
  const labelled = new Set();  // a tensor read by several layers is labelled once, where the edges fork
  for (const e of lay.edges) {
    const [p0, p1] = e.pts, t = Math.min(0.5, 14 / Math.max(1, p1[1] - p0[1]));  // just under the producer
    const shape = shapeText(e.shape), fork = `${e.from}|${shape}`;
    const label = labelled.has(fork) ? "" : `<text x="${(p0[0] + (p1[0] - p0[0]) * t * t * (3 - 2 * t) + 5).toFixed(1)}" ` +
      `y="${(p0[1] + (p1[1] - p0[1]) * t + 4).toFixed(1)}">${shape}</text>`;
    labelled.add(fork);
    parts.push(`<g class="edge" data-from="${e.from}" data-to="${e.to}" data-shape="${shape}"><title>${shape}</title>` +
      `<path d="${path(e.pts)}"/>${label}</g>`);
  }
  for (const v of lay.nodes) {
    const x = v.x - v.w / 2, y = v.y - v.h / 2;
    const row = v.row != null ? ` data-row="${v.row}"` : "";
    let inner = `<rect x="${x}" y="${y}" width="${v.w}" height="${v.h}" rx="${v.kind === "layer" || v.kind === "group" ? 5 : 13}"/>`;
    if (v.kind === "group") {
      inner += `<text class="toggle control" data-toggle="${v.group.id}" x="${x + 6}" y="${y + 16}">⊞</text>` +
        `<text class="name" x="${v.x + 8}" y="${y + 15}">${esc(v.label)}</text>` +
        `<text class="sub" x="${v.x + 8}" y="${y + 29}">${esc(v.sub)}</text>` +
        `<text class="sub" x="${v.x + 8}" y="${y + 43}">${esc(v.io)}</text>`;
    } else if (v.kind === "layer") {
      inner += `<text class="name" x="${v.x}" y="${y + 15}">${esc(v.label)}</text>` +
        `<text class="sub" x="${v.x}" y="${y + 29}">${esc(v.sub)}</text>`;
    } else {
      inner += `<text class="name" x="${v.x}" y="${y + 17}">${esc(v.label)}</text>`;
    }
    const title = v.node ? v.node.name : v.group.name;
    parts.push(`<g class="node ${v.kind}" data-key="${v.key}"${row}><title>${esc(title)}</title>${inner}</g>`);
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${lay.width}" height="${lay.height}" ` +
    `viewBox="0 0 ${lay.width} ${lay.height}">${parts.join("")}</svg>`;
}
