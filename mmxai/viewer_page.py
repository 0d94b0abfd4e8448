"""The viewer page's markup and style: one template, filled by
:func:`mmxai.viewer.html_page`; its script is :mod:`mmxai.viewer_script`.

Each ``@@name@@`` is replaced once, in one pass, by text :func:`mmxai.viewer.html_page` has
already escaped (HTML text, or JSON safe inside a script). The maps arrive as 8-bit grey
PNGs with each map's raw (min, max); the script colours them with the JET table of
:func:`mmxai.viewer.jet` (``LUT``), so one set of images serves both views: each map
min-max scaled, or raw values on one scale per method. The page reads its state from the
URL fragment and writes it back, and reports what it drew in ``data-*`` attributes
(``body[data-shown]``, each panel's ``data-box``), which the browser test reads. A video's
page adds :data:`TIMELINE`: the chosen token's map on every temporal patch, and a play
button that steps through them.
"""

from mmxai.viewer_script import SCRIPT

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
.frame { margin: 0; cursor: pointer; }
.frame canvas { display: block; border: 3px solid transparent; }
.frame.on canvas { border-color: #222; }
.frame figcaption { text-align: center; }
#play { min-width: 5em; }
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
@@timeline@@
<h2 id="strip-title"></h2>
<div class="strip" id="strip"></div>
<script>
@@script@@
</script>
</body></html>
""".replace("@@script@@", SCRIPT, 1)

#: A video's strip: the chosen token's map on each temporal patch, with a play button.
TIMELINE = """<h2 id="frames-title"></h2>
<div class="bar"><button type="button" id="play">play</button>
<small>space or k: play/pause &middot; comma/period: previous/next temporal patch
&middot; left/right arrows: tokens</small>
</div>
<div class="strip" id="frames"></div>"""
