"""The viewer page's script (:data:`SCRIPT`), placed into :data:`mmxai.viewer_page.TEMPLATE`.

Its ``@@name@@`` placeholders are filled in the template's one pass by
:func:`mmxai.viewer.html_page`, with JSON safe inside a script. ``MAPS[method][token]`` is
one grey PNG (an image) or one per temporal patch (a video, whose ``FRAMES`` are the
patches' first source frames). The state (method, token, temporal patch ``t``, the views)
lives in the URL fragment; what was drawn is reported in ``body[data-shown]`` and each
canvas's ``data-box``, which the browser test reads.
"""

SCRIPT = """
"use strict";
const MAPS = @@maps@@;
const RANGES = @@ranges@@;
const TEXT = @@text@@;
const FRAMES = @@frames@@;  // a video: each temporal patch's first source frame; else []
const FRAME_LABELS = @@labels@@;
let method = @@first@@;
let token = 0, t = 0;
const VIDEO = FRAMES.length > 0;
const names = Object.keys(MAPS);
const toks = Array.from(document.querySelectorAll(".tok"));
const view = { alpha: @@alpha@@, raw: false, original: false };
const PANEL = 220, THUMB = 72, FRAME = 120, STEP_MS = 700;  // CSS pixels; ms per patch
const byId = (id) => document.getElementById(id);
const photo = byId("photo"), heat = byId("map"), select = byId("method");
// What each temporal patch's maps lie over: the page's image, or the video's frames.
const backdrops = VIDEO ? FRAMES.map((src) => Object.assign(new Image(), { src })) : [photo];
const ready = backdrops.map((img) => img.decode().catch(() => undefined));

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

const decoded = new Map();  // method/token/patch -> promise of the map's 8-bit values
function grey(name, i, k) {
  const key = JSON.stringify([name, i, k]);
  if (!decoded.has(key)) {
    decoded.set(key, new Promise((resolve, reject) => {
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
      img.onerror = () => reject(new Error("map " + i + (VIDEO ? " at t" + k : "") + " of " +
        name + " cannot be decoded"));
      img.src = VIDEO ? MAPS[name][i][k] : MAPS[name][i];
    }));
  }
  return decoded.get(key);
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

async function paint(canvas, name, i, k, width, current) {  // patch k's frame, map i over it
  const map = await grey(name, i, k);
  await ready[k];
  if (!current()) return;  // a later choice repaints this canvas
  const back = backdrops[k];
  const ratio = window.devicePixelRatio || 1;
  const height = Math.max(1, Math.round(width * back.naturalHeight / back.naturalWidth));
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = width + "px";
  const g = canvas.getContext("2d");
  g.drawImage(back, 0, 0, canvas.width, canvas.height);
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
  toks.forEach((tok, k) => {
    tok.classList.toggle("on", k === token);
    const v = rows && k !== token ? rows[token][k] : 0;
    if (rows && k !== token) tok.dataset.rel = v.toFixed(4); else delete tok.dataset.rel;
    const q = Math.round(255 * v);
    tok.style.backgroundColor = v > 0 ? "rgba(" + LUT[3 * q] + ", " + LUT[3 * q + 1] + ", " +
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

let drawn = 0, stripKey = "", framesKey = "";
async function render() {
  const run = ++drawn, current = () => run === drawn;
  if (!names.length || !toks.length) {
    byId("note").textContent = "nothing to show: no " + (names.length ? "token" : "method");
    return;
  }
  if (select) select.value = method;
  colourText();
  const word = toks[token].textContent;
  byId("cap").textContent = method + ", token " + token + ": " + JSON.stringify(word) +
    (VIDEO ? ", " + FRAME_LABELS[t] : "");
  const [from, to] = scaleOf(method, token);
  scaleBar(byId("scale"), from, to, view.raw ? "raw values (" + method + ", all tokens)"
    : VIDEO ? "min-max of this token's map, every patch" : "min-max of this map");
  heat.style.visibility = view.original ? "hidden" : "visible";
  if (VIDEO && photo.getAttribute("src") !== FRAMES[t]) photo.src = FRAMES[t];
  const jobs = [grey(method, token, t).then((map) => {
    if (current()) heat.src = coloured(method, token, map).toDataURL();
  })];
  for (const fig of document.querySelectorAll(".panel")) {
    const name = fig.dataset.method;
    fig.classList.toggle("on", name === method);
    scaleBar(fig.querySelector(".scale"), ...scaleOf(name, token));
    jobs.push(paint(fig.querySelector("canvas"), name, token, t, PANEL, current));
  }
  byId("strip-title").textContent = "every token, " + method + (VIDEO ? ", " + FRAME_LABELS[t]
    : "");
  const key = JSON.stringify([method, view.raw, view.original, view.alpha, t]);
  const thumbs = Array.from(document.querySelectorAll(".thumb"));
  thumbs.forEach((fig, i) => fig.classList.toggle("on", i === token));
  if (key !== stripKey) {
    stripKey = key;
    thumbs.forEach((fig, i) => jobs.push(
      paint(fig.querySelector("canvas"), method, i, t, THUMB, () => stripKey === key)));
  }
  if (VIDEO) {
    byId("frames-title").textContent = "token " + token + " " + JSON.stringify(word) +
      " over time, " + method;
    const frames = Array.from(document.querySelectorAll(".frame"));
    frames.forEach((fig, k) => fig.classList.toggle("on", k === t));
    const timeKey = JSON.stringify([method, token, view.raw, view.original, view.alpha]);
    if (timeKey !== framesKey) {
      framesKey = timeKey;
      frames.forEach((fig, k) => jobs.push(
        paint(fig.querySelector("canvas"), method, token, k, FRAME, () => framesKey === timeKey)));
    }
  }
  try {
    await Promise.all(jobs);
  } catch (error) {
    byId("note").textContent = String(error.message || error);
    return;
  }
  if (!current()) return;
  for (const fig of document.querySelectorAll(".panel, .thumb, .frame")) {
    fig.dataset.box = boxOf(fig.querySelector("canvas"));
  }
  heat.dataset.box = boxOf(heat);
  const shown = [method, token, view.raw, view.original];
  document.body.dataset.shown = JSON.stringify(VIDEO ? [...shown, t] : shown);
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
  if ("t" in change) t = change.t;
  const state = new URLSearchParams({ token: String(token), method,
    raw: view.raw ? "1" : "0", original: view.original ? "1" : "0" });
  if (VIDEO) state.set("t", String(t));
  try {
    history.replaceState(null, "", "#" + state.toString());
  } catch (error) {  // a page whose address cannot change (sandboxed): the view still changes
  }
  render();
}

let timer = null;
function play(on) {  // step through the temporal patches, from the chosen one, round and round
  if (!VIDEO || on === (timer !== null)) return;
  if (on) timer = setInterval(() => choose({ t: (t + 1) % FRAMES.length }), STEP_MS);
  else {
    clearInterval(timer);
    timer = null;
  }
  byId("play").textContent = on ? "pause" : "play";
  document.body.dataset.playing = on ? "1" : "0";
}

function seek(k) {  // a frame the user chose stays in view: playing stops
  play(false);
  choose({ t: Math.min(Math.max(k, 0), FRAMES.length - 1) });
}

function fromFragment() {  // #token=3&method=tam&raw=1&original=0&t=2; a bad value is said
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
  if (asked.has("t")) {
    const value = asked.get("t");
    if (!VIDEO) notes.push("#t=" + value + ": an image has no temporal patches");
    else if (/^[0-9]+$/.test(value) && Number(value) < FRAMES.length) t = Number(value);
    else notes.push("#t=" + value + ": no such temporal patch (0 to " + (FRAMES.length - 1) +
      ")");
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
toks.forEach((tok, i) => {
  tok.addEventListener("click", () => choose({ token: i }));
  const fig = figure("thumb", tok.textContent || "\\u200b", () => choose({ token: i }));
  fig.dataset.i = String(i);
  byId("strip").append(fig);
});
if (VIDEO) {
  FRAME_LABELS.forEach((label, k) => {
    const fig = figure("frame", label, () => seek(k));
    fig.dataset.t = String(k);
    byId("frames").append(fig);
  });
  byId("play").addEventListener("click", () => play(timer === null));
  document.body.dataset.playing = "0";
}
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
  // a selector or a slider keeps its own arrow keys; a button or a box its own space bar
  const inside = (what) => e.target.closest && e.target.closest(what);
  if (!toks.length || inside("select, input[type=range]")) return;
  if (e.key === "ArrowRight") choose({ token: Math.min(token + 1, toks.length - 1) });
  if (e.key === "ArrowLeft") choose({ token: Math.max(token - 1, 0) });
  if (!VIDEO) return;
  if (e.key === ".") seek(t + 1);
  if (e.key === ",") seek(t - 1);
  if ((e.key === " " || e.key === "k") && !inside("button, input")) {
    e.preventDefault();  // the space bar plays, it does not scroll
    play(timer === null);
  }
});
window.addEventListener("hashchange", () => { fromFragment(); render(); });
fromFragment();
render();
"""
