"""The viewer in a real browser: headless Chromium (Debian's ``chromium``) on the page
``mmxai explain`` writes for the bundled model, driven like a user.

The browser is driven over the Chrome DevTools protocol on a pipe (``--remote-debugging-pipe``:
NUL-separated JSON on file descriptors 3 and 4), with the standard library only: the mouse
clicks a token, a method's panel and a thumbnail, the keyboard steps through tokens, the
selector and the check boxes change, a URL fragment opens a view; then the DOM is read and a
screenshot is taken. A video's page (its strip of temporal patches, play/pause) is driven
the same way. Skips only when ``chromium`` is not installed (tests/QUARANTINES.md);
CI installs it (.ci/run).
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmxai import api, cli, viewer
from mmxai.methods.tam import TAM

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "testbed" / "weights" / "testbed"
IMAGE = ROOT / "testbed" / "data" / "synthetic" / "images" / "0000.png"
METHODS = ["tam", "logit-lens", "attention"]
CHROMIUM = shutil.which("chromium")
WIDTH, HEIGHT = 1400, 1000
TIMEOUT = 60.0  # seconds for one protocol reply or one awaited state; the box may be loaded
SHOWN = "JSON.parse(document.body.dataset.shown || 'null')"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(apt-get install chromium; tests/QUARANTINES.md)")


def above_4(fd: int) -> int:
    """``fd`` moved to the lowest free descriptor above 4."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 5)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium page, driven over the DevTools protocol on a pipe."""

    def __init__(self, profile: Path, log: Path) -> None:
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()
        # the browser's ends above 4, so that moving them to 3 and 4 overwrites neither
        to_browser, from_browser = (above_4(fd) for fd in (to_browser, from_browser))
        command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                   "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run",
                   "--hide-scrollbars", "--force-device-scale-factor=1",
                   f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
        # bash, not sh: dash cannot redirect a descriptor above 9
        with open(log, "wb") as stderr:  # the browser's own chatter, for a failing test
            self.process = subprocess.Popen(
                ["bash", "-c", f'exec "$@" 3<&{to_browser} 4>&{from_browser} '
                               f"{to_browser}<&- {from_browser}>&-", "bash", *command],
                pass_fds=(to_browser, from_browser), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._id, self.session = b"", 0, None
        page = next(t for t in self.call("Target.getTargets")["targetInfos"]
                    if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"],
                                 flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data):]
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited ({self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, expected) -> None:
        deadline = time.monotonic() + TIMEOUT
        while (value := self.evaluate(expression)) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{expression} is {value!r}, expected {expected!r}")
            time.sleep(0.05)

    def open(self, url: str) -> None:
        """A fresh load (not a same-page fragment change), until the page has drawn."""
        self.call("Page.navigate", url="about:blank")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && 'shown' in document.body.dataset",
                      True)

    def shown(self) -> list | None:
        """What the page last drew: [method, token, raw values, original image]."""
        return self.evaluate(SHOWN)

    def wait_shown(self, expected: list) -> None:
        self.wait_for(SHOWN, expected)

    def click(self, selector: str) -> None:
        """A left click of the mouse at the middle of the element ``selector`` finds."""
        x, y = self.evaluate(f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            e.scrollIntoView({{block: "center", inline: "center"}});
            const r = e.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2]; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def key(self, key: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                      windowsVirtualKeyCode=code)

    def screenshot(self) -> Image.Image:
        self.evaluate("window.scrollTo(0, 0)")
        data = self.call("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self) -> None:
        try:
            self.session = None
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._in)
        os.close(self._out)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> dict:
    """``mmxai explain`` of the bundled model on a shipped scene with three methods: the
    page's URL and run.json."""
    out = tmp_path_factory.mktemp("viewer")
    assert cli.main(["explain", str(MODEL), str(IMAGE), "--method", *METHODS,
                     "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    return {"url": (out / "index.html").as_uri(), "run": run, "out": out}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chromium")
    driven = Browser(folder / "profile", folder / "chromium.log")
    yield driven
    driven.close()


def dom(browser: Browser) -> dict:
    """What the page shows, read off its DOM."""
    return browser.evaluate("""(() => {
        const all = (s) => Array.from(document.querySelectorAll(s));
        return {
          text: document.getElementById("text").textContent,
          on: all(".tok.on").map((t) => Number(t.dataset.i)),
          rel: all(".tok").map((t) => t.dataset.rel === undefined ? null : Number(t.dataset.rel)),
          panels: all(".panel").map((f) => f.dataset.method),
          panelOn: all(".panel.on").map((f) => f.dataset.method),
          boxes: all(".panel").map((f) => f.dataset.box.split(",").map(Number)),
          main: document.getElementById("map").dataset.box.split(",").map(Number),
          scales: all(".panel .scale").map((s) => [Number(s.dataset.low), Number(s.dataset.high)]),
          mainScale: document.getElementById("scale").textContent,
          thumbs: all(".thumb figcaption").map((c) => c.textContent),
          thumbOn: all(".thumb.on").map((f) => Number(f.dataset.i)),
          strip: document.getElementById("strip-title").textContent,
          caption: document.getElementById("cap").textContent,
          legend: document.getElementById("legend").textContent,
          note: document.getElementById("note").textContent,
          hash: location.hash,
          select: document.getElementById("method").value,
          heatHidden: document.getElementById("map").style.visibility === "hidden",
          heatLoaded: document.getElementById("map").naturalWidth > 0,
        }; })()""")


def test_the_answer_shows_spaced_as_the_tokenizer_spaces_it(page, browser):
    browser.open(page["url"])
    shown = dom(browser)
    words = page["run"]["tokens"]
    assert words[:3] == ["a", "green", "circle"]  # word-level: each token decodes unspaced
    assert shown["text"].replace("</s>", "") == page["run"]["answer"]
    assert shown["text"].startswith("a green circle left of a")
    assert shown["thumbs"] == words  # the strip: one thumbnail per token, captioned
    assert browser.shown() == ["tam", 0, False, False]  # the first method, the first token


def test_clicking_a_token_shows_every_method_s_map_of_it_side_by_side(page, browser):
    browser.open(page["url"])
    browser.click('.tok[data-i="6"]')
    browser.wait_shown(["tam", 6, False, False])
    shown = dom(browser)
    assert shown["on"] == [6] and shown["thumbOn"] == [6]
    assert shown["caption"] == 'tam, token 6: "orange"'
    assert shown["hash"] == "#token=6&method=tam&raw=0&original=0"  # a link to this view
    assert shown["panels"] == METHODS and shown["panelOn"] == ["tam"]
    assert shown["heatLoaded"] and not shown["heatHidden"]
    boxes = shown["boxes"]
    assert all(w == boxes[0][2] and h == boxes[0][3] > 100 for _, _, w, h in boxes)  # one size
    assert len({y for _, y, _, _ in boxes}) == 1  # in one row, left to right, beside the image
    assert all(a[0] + a[2] <= b[0] for a, b in zip(boxes, boxes[1:], strict=False))
    assert shown["main"][0] + shown["main"][2] <= boxes[0][0] and shown["main"][2] >= 512
    for low, high in shown["scales"]:  # each colour bar: that map's raw min and max
        assert np.isfinite([low, high]).all() and high > low


def test_switching_method_by_panel_selector_and_thumbnail(page, browser):
    browser.open(page["url"] + "#token=6")
    browser.click('.panel[data-method="logit-lens"]')
    browser.wait_shown(["logit-lens", 6, False, False])
    shown = dom(browser)
    assert shown["select"] == "logit-lens" and shown["panelOn"] == ["logit-lens"]
    assert shown["strip"] == "every token, logit-lens"
    assert shown["caption"] == 'logit-lens, token 6: "orange"'
    assert shown["rel"] == [None] * len(page["run"]["tokens"])  # no text half
    browser.evaluate("""(() => { const s = document.getElementById("method");
        s.value = "attention"; s.dispatchEvent(new Event("change")); })()""")
    browser.wait_shown(["attention", 6, False, False])
    browser.click('.thumb[data-i="11"]')
    browser.wait_shown(["attention", 11, False, False])
    browser.key("ArrowRight", 39)
    browser.wait_shown(["attention", 12, False, False])
    assert dom(browser)["caption"] == 'attention, token 12: "triangle"'


def test_tam_colours_the_answer_by_its_text_relevance(page, browser):
    browser.open(page["url"] + "#token=6&method=tam")
    shown = dom(browser)
    assert browser.shown() == ["tam", 6, False, False]
    assert "relevance" in shown["legend"]
    rel = shown["rel"]
    assert rel[6] is None  # the chosen token itself
    model = api.open_pretrained(str(MODEL))
    explanation = api.explain(model, str(IMAGE), page["run"]["prompt"], "tam")
    assert explanation.words == page["run"]["tokens"]  # the same greedy answer
    expected = TAM().text_relevance(explanation.trace, explanation.tokens)[6]
    np.testing.assert_allclose([r for k, r in enumerate(rel) if k != 6],
                               np.delete(expected, 6), atol=1e-4)
    assert max(rel[:6]) > 0 and all(r == 0 for r in rel[7:])  # only earlier tokens relate


def test_raw_values_and_the_original_image_toggles(page, browser):
    browser.open(page["url"] + "#token=6&method=logit-lens")
    per_map = [dom(browser)["scales"]]
    browser.key("ArrowRight", 39)
    browser.wait_shown(["logit-lens", 7, False, False])
    per_map.append(dom(browser)["scales"])
    assert per_map[0] != per_map[1]  # each map min-max: its own scale
    browser.click("#raw")
    browser.wait_shown(["logit-lens", 7, True, False])
    raw = [dom(browser)["scales"]]
    assert "raw values" in dom(browser)["mainScale"]
    browser.key("ArrowLeft", 37)
    browser.wait_shown(["logit-lens", 6, True, False])
    raw.append(dom(browser)["scales"])
    assert raw[0] == raw[1]  # raw: one scale per method over every token
    for (low, high), maps in zip(raw[0], per_map[0], strict=True):
        assert low <= maps[0] and maps[1] <= high
    pixels = "Array.from(document.querySelectorAll('.panel canvas')).map((c) => c.toDataURL())"
    assert len(set(browser.evaluate(pixels))) == len(METHODS)  # three different maps
    browser.click("#original")
    browser.wait_shown(["logit-lens", 6, True, True])
    assert dom(browser)["heatHidden"]
    assert len(set(browser.evaluate(pixels))) == 1  # the image alone, in every panel
    assert dom(browser)["hash"] == "#token=6&method=logit-lens&raw=1&original=1"


def test_a_fragment_the_page_cannot_show_is_said_not_used(page, browser):
    browser.open(page["url"] + "#token=99&method=nope&raw=yes")
    shown = dom(browser)
    assert browser.shown() == ["tam", 0, False, False]
    assert "#token=99: no such token (0 to 14)" in shown["note"]
    assert "#method=nope: no such method here (tam, logit-lens, attention)" in shown["note"]
    assert "#raw=yes: 0 or 1" in shown["note"]


def test_the_screenshot_shows_the_image_and_the_maps_side_by_side(page, browser, tmp_path):
    browser.open(page["url"] + "#token=6&method=tam")
    shown = dom(browser)
    shot = browser.screenshot()
    shot.save(tmp_path / "viewer.png")  # kept by pytest's tmp_path, to look at
    assert shot.size == (WIDTH, HEIGHT)
    assert np.asarray(shot.convert("L"), dtype=np.float32).std() > 20  # not blank
    browser.click("#original")
    browser.wait_shown(["tam", 6, False, True])
    bare = browser.screenshot()
    boxes = [shown["main"], *shown["boxes"]]  # the large view, then each method's panel

    def crops(picture: Image.Image) -> list[np.ndarray]:  # inside the chosen one's border
        return [np.asarray(picture.crop((x + 4, y + 4, x + w - 4, y + h - 4)), dtype=np.float32)
                for x, y, w, h in boxes]

    with_maps, image_only = crops(shot), crops(bare)
    changes = [np.abs(a - b).mean() for a, b in zip(with_maps, image_only, strict=True)]
    assert all(c > 15 for c in changes), changes  # a map over the image in every view
    panels = with_maps[1:]
    differences = [np.abs(a - b).mean() for i, a in enumerate(panels) for b in panels[i + 1:]]
    assert all(d > 10 for d in differences), differences  # each method's own map
    assert all(np.abs(a - image_only[1]).mean() < 1 for a in image_only[2:]), [
        np.abs(a - image_only[1]).mean() for a in image_only[2:]]  # the same image alone


# -- a video's page: the chosen token's map on every temporal patch, played ------------------
PATCHES = 3
VIDEO_SHOWN = ["a", 1, False, False]  # + the temporal patch


@pytest.fixture(scope="module")
def video_page(tmp_path_factory) -> dict:
    """A video's page (:func:`mmxai.viewer.html_page` with frames): three temporal patches,
    each over a frame of its own colour, two methods, three tokens; its URL and labels."""
    frames = [Image.new("RGB", (96, 64), colour) for colour in
              [(200, 40, 40), (40, 200, 40), (40, 40, 200)]]
    rng = np.random.default_rng(0)
    methods = [viewer.PageMethod.from_maps(name, [rng.random((PATCHES, 8, 12))
                                                  for _ in range(3)]) for name in ("a", "b")]
    labels = [f"t{t}: frames {2 * t}-{2 * t + 1}" for t in range(PATCHES)]
    out = tmp_path_factory.mktemp("video-viewer") / "index.html"
    out.write_text(viewer.html_page("clip", frames, [" one", " two", " three"], methods,
                                    frame_labels=labels), encoding="utf-8")
    return {"url": out.as_uri(), "labels": labels}


def frames_dom(browser: Browser) -> dict:
    return browser.evaluate("""(() => {
        const all = (s) => Array.from(document.querySelectorAll(s));
        return {
          frames: all(".frame").map((f) => Number(f.dataset.t)),
          captions: all(".frame figcaption").map((c) => c.textContent),
          on: all(".frame.on").map((f) => Number(f.dataset.t)),
          boxes: all(".frame").map((f) => (f.dataset.box || "").split(",").map(Number)),
          pixels: all(".frame canvas").map((c) => c.toDataURL()),
          panels: all(".panel canvas").map((c) => c.toDataURL()),
          photo: document.getElementById("photo").src,
          framesData: FRAMES,
          caption: document.getElementById("cap").textContent,
          title: document.getElementById("frames-title").textContent,
          hash: location.hash,
          note: document.getElementById("note").textContent,
          playing: document.body.dataset.playing,
        }; })()""")


def test_a_video_token_shows_a_strip_of_its_temporal_patches(video_page, browser):
    browser.open(video_page["url"] + "#token=1")
    browser.wait_shown([*VIDEO_SHOWN, 0])
    shown = frames_dom(browser)
    assert shown["frames"] == list(range(PATCHES)) and shown["on"] == [0]
    assert shown["captions"] == video_page["labels"]
    # drawn 120 x 80 (the frames' 3:2) inside a 3-pixel border, in one row
    assert all(w == 126 and h == 86 for _, _, w, h in shown["boxes"]), shown["boxes"]
    assert len({y for _, y, _, _ in shown["boxes"]}) == 1
    assert len(set(shown["pixels"])) == PATCHES  # each patch's own frame and map
    assert shown["photo"] == shown["framesData"][0]
    assert shown["title"] == 'token 1 " two" over time, a'
    assert shown["caption"] == f'a, token 1: " two", {video_page["labels"][0]}'
    browser.click('.frame[data-t="2"]')
    browser.wait_shown([*VIDEO_SHOWN, 2])
    after = frames_dom(browser)
    assert after["on"] == [2] and after["photo"] == after["framesData"][2]
    assert after["hash"] == "#token=1&method=a&raw=0&original=0&t=2"
    assert after["panels"] != shown["panels"]  # every method's panel at the chosen patch
    assert after["pixels"] == shown["pixels"]  # the strip: the same token, unchanged


def test_play_steps_through_the_patches_and_pause_stops(video_page, browser):
    browser.open(video_page["url"] + "#token=1&t=1")
    browser.wait_shown([*VIDEO_SHOWN, 1])
    assert frames_dom(browser)["playing"] == "0"
    browser.click("#play")
    browser.wait_shown([*VIDEO_SHOWN, 2])  # one step on, then round to the first
    browser.wait_shown([*VIDEO_SHOWN, 0])
    assert frames_dom(browser)["playing"] == "1"
    browser.click("#play")
    assert frames_dom(browser)["playing"] == "0"
    stopped = browser.shown()
    time.sleep(1.6)  # more than two steps' time
    assert browser.shown() == stopped
    browser.key(" ", 32)  # the space bar plays too
    browser.wait_for("document.body.dataset.playing", "1")
    browser.key(".", 190)  # stepping by hand pauses
    browser.wait_for("document.body.dataset.playing", "0")


def test_keys_and_the_fragment_choose_the_patch(video_page, browser):
    browser.open(video_page["url"] + "#t=2&method=b")
    browser.wait_shown(["b", 0, False, False, 2])
    browser.key(",", 188)
    browser.wait_shown(["b", 0, False, False, 1])
    browser.key("ArrowRight", 39)  # tokens, as on an image's page; the patch stays
    browser.wait_shown(["b", 1, False, False, 1])
    browser.open(video_page["url"] + "#t=7")
    assert "#t=7: no such temporal patch (0 to 2)" in frames_dom(browser)["note"]
    assert browser.shown() == ["a", 0, False, False, 0]


def test_an_image_page_says_it_has_no_temporal_patches(page, browser):
    browser.open(page["url"] + "#t=1")
    assert "#t=1: an image has no temporal patches" in dom(browser)["note"]
    assert browser.shown() == ["tam", 0, False, False]
