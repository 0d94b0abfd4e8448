"""The viewer page's markup, style and script: one template, filled by
:func:`mmxai.viewer.html_page`.

Each ``@@name@@`` is replaced once, in one pass, by text :func:`mmxai.viewer.html_page` has
already escaped (HTML text, or JSON safe inside a script). The maps arrive as 8-bit grey
PNGs with each map's raw (min, max); the script colours them with the JET table of
:func:`mmxai.viewer.jet` (``LUT``), so one set of images serves both views: each map
min-max scaled, or raw values on one scale per method. The page reads its state from the
URL fragment and writes it back, and reports what it drew in ``data-*`` attributes
(``body[data-shown]``, each panel's ``data-box``), which the browser test reads.
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@@title@@</title>
<style>
:root { --main: @@width@@px; }
body { font-family: system-ui, sans-serif; margin: 1.2em 1.5em; color: #222; }
h1 { font-size: 1.2em; margin: 0 0 .2em; }
h2 { font-size: .95em; margin: 1em 0 .5em; color: #444; }
.methods h2 { margin-top: 0; }
.sub { color: #666; margin: 0 0 .6em; font-size: .9em; }
.bar { margin: .5em 0; display: flex; flex-wrap: wrap; gap: .4em 1.6em; align-items: center; }
.text { white-space: pre-wrap; line-height: 2.1; font-size: 1.1em; padding: .4em .7em;
        border: 1px solid #ddd; border-radius: 6px; background: #fafafa; }
.tok { cursor: pointer; border-radius: 3px; padding: 2px 1px; }
.tok:hover { outline: 1px solid #888; }
.tok.on { background: #ffe08a; outline: 2px solid #222; font-weight: 600; }
.legend { font-size: .85em; color: #555; min-height: 1.2em; margin: .3em 0 0; }
.note { color: #a00; font-size: .9em; margin: .2em 0; }
.views { display: flex; gap: 1.5em; align-items: flex-start; margin-top: .6em; }
.views figure { margin: 0; }
.stack { position: relative; width: var(--main); max-width: 92vw; }
.stack img { display: block; width: 100%; height: auto; }
.stack img.heat { position: absolute; inset: 0; height: 100%; opacity: @@alpha@@; }
.scale { display: flex; align-items: center; gap: .4em; font-size: .8em; color: #444;
         margin-top: .25em; }
.ramp { flex: 1; min-width: 3em; height: .7em; border: 1px solid #888;
        background: linear-gradient(to right, @@ramp@@); }
.methods { flex: 1 1 240px; min-width: 240px; }
.grid { display: flex; flex-wrap: wrap; gap: .9em; }
.panel, .thumb { margin: 0; cursor: pointer; }
.panel canvas, .thumb canvas { display: block; border: 3px solid transparent; }
.panel.on canvas, .thumb.on canvas { border-color: #222; }
.strip { display: flex; gap: .4em; overflow-x: auto; padding-bottom: .4em; }
.thumb figcaption { text-align: center; white-space: pre; }
figcaption { font-size: .85em; color: #444; overflow-wrap: anywhere; }
</style></head>
<body>
<h1>@@title@@</h1>
<p class="sub">@@subtitle@@</p>
<div class="bar">@@selector@@
<label>map opacity <input type="range" id="alpha" min="0" max="1" step="0.05" value="@@alpha@@">
</label>
<label>image size <input type="range" id="size" min="128" max="1600" step="16" value="@@width@@">
</label>
<label><input type="checkbox" id="original"> original image</label>
<label><input type="checkbox" id="raw"> raw values</label></div>
<div class="text" id="text">@@tokens@@</div>
<p class="legend" id="legend"></p>
<p class="note" id="note"></p>
<div class="views">
<figure><div class="stack"><img id="photo" src="@@image@@" alt="input image">
<img class="heat" id="map" alt="map of the chosen token"></div>
<div class="scale" id="scale"></div>
<figcaption id="cap"></figcaption></figure>
<section class="methods"><h2>every method, this token</h2><div class="grid" id="grid"></div>
</section></div>
<h2 id="strip-title"></h2>
<div class="strip" id="strip"></div>
<script>
"use strict";
const MAPS = @@maps@@;
const RANGES = @@ranges@@;
const TEXT = @@text@@;
let method = @@first@@;
let token = 0;
const names = Object.keys(MAPS);
const toks = Array.from(document.querySelectorAll(".tok"));
const view = { alpha: @@alpha@@, raw: false, original: false };
const PANEL = 220, THUMB = 72;  // CSS pixels
const byId = (id) => document.getElementById(id);
const photo = byId("photo"), heat = byId("map"), select = byId("method");
const photoReady = photo.decode().catch(() => undefined);

// The JET table of mmxai.viewer.jet: an RGB triple per 8-bit value.
const LUT = new Uint8ClampedArray(768);
for (let q = 0; q < 256; q++) {
  [0.75, 0.5, 0.25].forEach((centre, k) => {
    const x = Math.min(Math.max(1.5 - Math.abs(4 * q / 255 - 4 * centre), 0), 1);
    LUT[3 * q + k] = Math.floor(x * 255 + 0.5);
  });
}

function fmt(x) {  // three significant digits, as mmxai.viewer.number
  const a = Math.abs(x);
  return a !== 0 && (a >= 1e5 || a < 1e-4) ? x.toExponential(2) : String(Number(x.toPrecision(3)));
}

const spans = new Map();
function spanOf(name) {  // a method's raw range over every token: the raw view's scale
  if (!spans.has(name)) {
    const pairs = RANGES[name];
    spans.set(name, [pairs.reduce((m, p) => Math.min(m, p[0]), Infinity),
                     pairs.reduce((m, p) => Math.max(m, p[1]), -Infinity)]);
  }
  return spans.get(name);
}

function scaleOf(name, i) {  // the raw values the colours of map i span in this view
  return view.raw ? spanOf(name) : RANGES[name][i];
}

const decoded = new Map();  // method -> token -> promise of the map's 8-bit values
function grey(name, i) {
  if (!decoded.has(name)) decoded.set(name, []);
  const cache = decoded.get(name);
  if (!cache[i]) {
    cache[i] = new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => {
        const c = document.createElement("canvas");
        c.width = img.naturalWidth;
        c.height = img.naturalHeight;
        const g = c.getContext("2d", { willReadFrequently: true });
        g.drawImage(img, 0, 0);
        const rgba = g.getImageData(0, 0, c.width, c.height).data;
        const values = new Uint8Array(c.width * c.height);
        for (let p = 0; p < values.length; p++) values[p] = rgba[4 * p];
        resolve({ width: c.width, height: c.height, values });
      };
      img.onerror = () => reject(new Error("map " + i + " of " + name + " cannot be decoded"));
      img.src = MAPS[name][i];
    });
  }
  return cache[i];
}

function coloured(name, i, map) {  // map i in JET, over this view's scale
  const c = document.createElement("canvas");
  c.width = map.width;
  c.height = map.height;
  const g = c.getContext("2d");
  const out = g.createImageData(map.width, map.height);
  const [lo, hi] = RANGES[name][i];
  const [from, to] = scaleOf(name, i);
  for (let p = 0; p < map.values.length; p++) {
    let q = map.values[p];
    if (view.raw) {
      const value = lo + (q / 255) * (hi - lo);
      const scaled = to > from ? Math.round(255 * (value - from) / (to - from)) : 0;
      q = Math.min(255, Math.max(0, scaled));
    }
    out.data[4 * p] = LUT[3 * q];
    out.data[4 * p + 1] = LUT[3 * q + 1];
    out.data[4 * p + 2] = LUT[3 * q + 2];
    out.data[4 * p + 3] = 255;
  }
  g.putImageData(out, 0, 0);
  return c;
}

async function paint(canvas, name, i, width, current) {  // the image, map i laid over it
  const map = await grey(name, i);
  await photoReady;
  if (!current()) return;  // a later choice repaints this canvas
  const ratio = window.devicePixelRatio || 1;
  const height = Math.max(1, Math.round(width * photo.naturalHeight / photo.naturalWidth));
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = width + "px";
  const g = canvas.getContext("2d");
  g.drawImage(photo, 0, 0, canvas.width, canvas.height);
  if (!view.original) {
    g.globalAlpha = view.alpha;
    g.drawImage(coloured(name, i, map), 0, 0, canvas.width, canvas.height);
  }
}

function scaleBar(box, from, to, label) {  // a colour bar from the lowest value to the highest
  const low = document.createElement("small"), high = document.createElement("small");
  const ramp = document.createElement("i");
  low.textContent = fmt(from);
  high.textContent = fmt(to);
  ramp.className = "ramp";
  box.replaceChildren(low, ramp, high);
  if (label) {
    const what = document.createElement("small");
    what.textContent = label;
    box.append(what);
  }
  box.dataset.low = String(from);
  box.dataset.high = String(to);
}

function colourText() {  // the text half, for a method that has one
  const rows = Object.prototype.hasOwnProperty.call(TEXT, method) ? TEXT[method] : null;
  toks.forEach((t, k) => {
    t.classList.toggle("on", k === token);
    const v = rows && k !== token ? rows[token][k] : 0;
    if (rows && k !== token) t.dataset.rel = v.toFixed(4); else delete t.dataset.rel;
    const q = Math.round(255 * v);
    t.style.backgroundColor = v > 0 ? "rgba(" + LUT[3 * q] + ", " + LUT[3 * q + 1] + ", " +
      LUT[3 * q + 2] + ", " + (0.2 + 0.6 * v).toFixed(2) + ")" : "";
  });
  byId("legend").textContent = rows ? "text: each answer token shaded by its relevance to the " +
    "chosen one (" + method + "'s text scores, 0 to 1, on the colour bar's colours; 0 for " +
    "the chosen token and those after it)" : "";
}

function boxOf(element) {  // page coordinates, CSS pixels
  const r = element.getBoundingClientRect();
  return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]
    .map(Math.round).join(",");
}

let drawn = 0, stripKey = "";
async function render() {
  const run = ++drawn, current = () => run === drawn;
  if (!names.length || !toks.length) {
    byId("note").textContent = "nothing to show: no " + (names.length ? "token" : "method");
    return;
  }
  if (select) select.value = method;
  colourText();
  const word = toks[token].textContent;
  byId("cap").textContent = method + ", token " + token + ": " + JSON.stringify(word);
  const [from, to] = scaleOf(method, token);
  scaleBar(byId("scale"), from, to, view.raw ? "raw values (" + method + ", all tokens)"
    : "min-max of this map");
  heat.style.visibility = view.original ? "hidden" : "visible";
  const jobs = [grey(method, token).then((map) => {
    if (current()) heat.src = coloured(method, token, map).toDataURL();
  })];
  for (const fig of document.querySelectorAll(".panel")) {
    const name = fig.dataset.method;
    fig.classList.toggle("on", name === method);
    scaleBar(fig.querySelector(".scale"), ...scaleOf(name, token));
    jobs.push(paint(fig.querySelector("canvas"), name, token, PANEL, current));
  }
  byId("strip-title").textContent = "every token, " + method;
  const key = JSON.stringify([method, view.raw, view.original, view.alpha]);
  const thumbs = Array.from(document.querySelectorAll(".thumb"));
  thumbs.forEach((fig, i) => fig.classList.toggle("on", i === token));
  if (key !== stripKey) {
    stripKey = key;
    thumbs.forEach((fig, i) => jobs.push(
      paint(fig.querySelector("canvas"), method, i, THUMB, () => stripKey === key)));
  }
  try {
    await Promise.all(jobs);
  } catch (error) {
    byId("note").textContent = String(error.message || error);
    return;
  }
  if (!current()) return;
  for (const fig of document.querySelectorAll(".panel, .thumb")) {
    fig.dataset.box = boxOf(fig.querySelector("canvas"));
  }
  heat.dataset.box = boxOf(heat);
  document.body.dataset.shown = JSON.stringify([method, token, view.raw, view.original]);
}

function figure(kind, caption, onClick) {
  const fig = document.createElement("figure"), cap = document.createElement("figcaption");
  fig.className = kind;
  cap.textContent = caption;
  fig.append(document.createElement("canvas"), cap);
  fig.addEventListener("click", onClick);
  return fig;
}

function choose(change) {
  if ("token" in change) token = change.token;
  if ("method" in change) method = change.method;
  const state = new URLSearchParams({ token: String(token), method,
    raw: view.raw ? "1" : "0", original: view.original ? "1" : "0" });
  try {
    history.replaceState(null, "", "#" + state.toString());
  } catch (error) {  // a page whose address cannot change (sandboxed): the view still changes
  }
  render();
}

function fromFragment() {  // #token=3&method=tam&raw=1&original=0; a bad value is said, not used
  const asked = new URLSearchParams(location.hash.slice(1)), notes = [];
  if (asked.has("method")) {
    const name = asked.get("method");
    if (names.includes(name)) method = name;
    else notes.push("#method=" + name + ": no such method here (" + names.join(", ") + ")");
  }
  if (asked.has("token")) {
    const value = asked.get("token");
    if (/^[0-9]+$/.test(value) && Number(value) < toks.length) token = Number(value);
    else notes.push("#token=" + value + ": no such token (0 to " + (toks.length - 1) + ")");
  }
  for (const flag of ["raw", "original"]) {
    if (!asked.has(flag)) continue;
    const value = asked.get(flag);
    if (value === "0" || value === "1") view[flag] = value === "1";
    else notes.push("#" + flag + "=" + value + ": 0 or 1");
  }
  byId("raw").checked = view.raw;
  byId("original").checked = view.original;
  byId("note").textContent = notes.join("; ");
}

for (const name of names) {
  const fig = figure("panel", name, () => choose({ method: name }));
  fig.dataset.method = name;
  fig.append(Object.assign(document.createElement("div"), { className: "scale" }));
  byId("grid").append(fig);
}
toks.forEach((t, i) => {
  t.addEventListener("click", () => choose({ token: i }));
  const fig = figure("thumb", t.textContent || "\\u200b", () => choose({ token: i }));
  fig.dataset.i = String(i);
  byId("strip").append(fig);
});
if (select) select.addEventListener("change", () => choose({ method: select.value }));
byId("alpha").addEventListener("input", (e) => {
  view.alpha = Number(e.target.value);
  heat.style.opacity = e.target.value;
  render();
});
byId("size").addEventListener("input", (e) => {
  document.documentElement.style.setProperty("--main", e.target.value + "px");
});
for (const flag of ["raw", "original"]) {
  byId(flag).addEventListener("change", (e) => { view[flag] = e.target.checked; choose({}); });
}
document.addEventListener("keydown", (e) => {
  // a selector or a slider keeps its own arrow keys
  if (!toks.length || (e.target.closest && e.target.closest("select, input[type=range]"))) return;
  if (e.key === "ArrowRight") choose({ token: Math.min(token + 1, toks.length - 1) });
  if (e.key === "ArrowLeft") choose({ token: Math.max(token - 1, 0) });
});
window.addEventListener("hashchange", () => { fromFragment(); render(); });
fromFragment();
render();
</script>
</body></html>
"""
