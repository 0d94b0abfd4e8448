"""Hostile input to the command line: every user mistake is one line and exit code 2 (before
the model loads where possible), failing methods and plugins are contained and named, and
nothing a plugin, model, prompt or file name says can become markup or script."""

from __future__ import annotations

import errno
import json
import re
import sys
import textwrap
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmxai import api, cli, registry, viewer
from mmxai.commands import explain as explain_cmd
from mmxai.commands import tiny as tiny_cmd
from mmxai.evaluation.tables import md_escape, tex_escape
from mmxai.hookspecs import hookimpl
from mmxai.method import Method


# -- helpers ---------------------------------------------------------------------------------
def run_cli(capsys, *argv: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what fixtures printed (building a tiny model, say)
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(code: int, err: str, *phrases: str) -> str:
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if explain gets as far as loading the model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(explain_cmd, "open_model", refuse)


@pytest.fixture
def model_dir(tiny_families, tiny_dir):
    return tiny_dir(next(iter(tiny_families)))


def explain_argv(model_dir, out, *extra, image=None, method="example-norm"):
    return ["explain", model_dir, image or model_dir / "demo.png", "--method", method,
            "--max-new-tokens", "2", "--out", out, *extra]


# -- 1. devices, dtypes, output folders: refused before the model loads ------------------------
@pytest.mark.parametrize(("device", "setup", "phrases"), [
    ("bogus", None, ["--device 'bogus'", "not a device"]),
    ("cuda:-1", None, ["--device 'cuda:-1'", "not a device"]),
    ("meta", None, ["--device 'meta'", "not on 'meta'"]),
    ("cuda", "no-cuda", ["--device 'cuda'", "CUDA is not available"]),
    ("cuda:3", "no-cuda", ["--device 'cuda:3'", "CUDA is not available"]),
    ("cuda:3", "one-gpu", ["--device 'cuda:3'", "no such device", "1 cuda device(s)"]),
    ("mps", "no-mps", ["--device 'mps'", "MPS", "not available"]),
    ("mps:1", "mps", ["--device 'mps:1'", "no such device"]),
    ("auto", "bad-rank", ["LOCAL_RANK 'x'", "device index"]),
    ("auto", "rank-3", ["LOCAL_RANK=3", "'cuda:3'", "no such device"]),
])
def test_bad_device_is_one_line_before_the_model_loads(device, setup, phrases, model_dir,
                                                       tmp_path, monkeypatch, capsys,
                                                       no_model_load):
    cuda = {"no-cuda": False, "one-gpu": True, "bad-rank": True, "rank-3": True}.get(setup, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if cuda else 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: setup == "mps")
    if setup == "bad-rank":
        monkeypatch.setenv("LOCAL_RANK", "x")
    elif setup == "rank-3":
        monkeypatch.setenv("LOCAL_RANK", "3")
    code, _, err = run_cli(capsys, *explain_argv(model_dir, tmp_path / "out", "--device", device))
    assert_one_line_error(code, err, *phrases)


def test_cpu_device_is_accepted():
    from mmxai.commands.common import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("dtype", ["int8", "bool", "junk", "float", "\udcff"])
def test_bad_dtype_is_one_line_before_the_model_loads(dtype, model_dir, tmp_path, capsys,
                                                      no_model_load):
    code, _, err = run_cli(capsys, *explain_argv(model_dir, tmp_path / "out", "--dtype", dtype))
    line = assert_one_line_error(code, err, "--dtype", "expected auto, float32, bfloat16")
    assert repr(dtype).encode("ascii", "backslashreplace").decode() in line


def test_out_under_a_regular_file_is_refused(model_dir, tmp_path, capsys, no_model_load):
    blocker = tmp_path / "some_file"
    blocker.write_text("a file, not a folder")
    code, _, err = run_cli(capsys, *explain_argv(model_dir, blocker / "sub"))
    assert_one_line_error(code, err, "--out", "some_file/sub", "cannot create the folder",
                          "Not a directory")


def test_out_that_is_an_existing_file_is_refused(model_dir, tmp_path, capsys, no_model_load):
    out = tmp_path / "out.txt"
    out.write_text("in the way")
    code, _, err = run_cli(capsys, *explain_argv(model_dir, out))
    assert_one_line_error(code, err, "--out", "out.txt", "cannot create the folder",
                          "File exists")
    assert out.read_text() == "in the way"


def _unwritable(folder: Path) -> Path:
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").write_text("x")
    except PermissionError:
        return folder
    (folder / "probe").unlink()
    folder.chmod(0o700)
    pytest.skip("running as root: a 0o500 folder is still writable (the file case covers it)")


def test_out_in_an_unwritable_folder_is_refused(model_dir, tmp_path, capsys, no_model_load):
    folder = _unwritable(tmp_path / "locked")
    try:
        code, _, err = run_cli(capsys, *explain_argv(model_dir, folder))
        assert_one_line_error(code, err, "--out", "locked", "cannot write into the folder",
                              "Permission denied")
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("blocker", ["index.html", "run.json", "example-norm"])
def test_out_with_something_in_the_way_is_refused(blocker, model_dir, tmp_path, capsys,
                                                  no_model_load):
    out = tmp_path / "out"
    out.mkdir()
    if blocker.endswith((".html", ".json")):
        (out / blocker).mkdir()
    else:
        (out / blocker).write_text("a file where the method's folder goes")
    code, _, err = run_cli(capsys, *explain_argv(model_dir, out))
    assert_one_line_error(code, err, "--out", blocker)


@pytest.fixture
def no_tiny_build(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the tiny model was built before DIR was checked")

    monkeypatch.setattr(tiny_cmd, "save_tiny", refuse)


def test_tiny_into_a_file_is_refused(tiny_families, tmp_path, capsys, no_tiny_build):
    target = tmp_path / "some_file"
    target.write_text("not a folder")
    family = next(iter(tiny_families))
    code, _, err = run_cli(capsys, "tiny", family, target)
    assert_one_line_error(code, err, "DIR", "some_file", "cannot create the folder")
    code, _, err = run_cli(capsys, "tiny", family, target / "sub")
    assert_one_line_error(code, err, "DIR", "some_file/sub", "Not a directory")


def test_tiny_into_an_unwritable_folder_is_refused(tiny_families, tmp_path, capsys,
                                                  no_tiny_build):
    folder = _unwritable(tmp_path / "locked")
    try:
        code, _, err = run_cli(capsys, "tiny", next(iter(tiny_families)), folder)
        assert_one_line_error(code, err, "DIR", "cannot write into the folder")
    finally:
        folder.chmod(0o700)


def test_save_tiny_checks_the_folder_before_building(tiny_families, tmp_path):
    target = tmp_path / "f"
    target.write_text("x")
    with pytest.raises(tiny_cmd.InputError, match="cannot create the folder"):
        tiny_cmd.save_tiny(next(iter(tiny_families)), target)


# -- 2. methods that fail or return bad maps; prompts; inputs the model refuses ----------------
def _n_image(trace) -> int:
    return sum(grid.size for grid in trace.grids)


class Fine(Method):
    name = "hx-fine"

    def explain(self, trace, tokens):
        return np.arange(len(tokens) * _n_image(trace), dtype=np.float32).reshape(len(tokens), -1)


class Raises(Method):
    name = "hx-raises"

    def explain(self, trace, tokens):
        raise RuntimeError("kaput")


class Buggy(Method):
    name = "hx-buggy"

    def explain(self, trace, tokens):
        return len(None)  # a genuine bug: TypeError


class WrongShape(Method):
    name = "hx-shape"

    def explain(self, trace, tokens):
        return np.zeros((len(tokens) + 1, 3))


class NotFinite(Method):
    name = "hx-nan"

    def explain(self, trace, tokens):
        maps = np.ones((len(tokens), _n_image(trace)))
        maps[0, 0] = np.nan
        return maps


class Overflows(Method):
    name = "hx-overflow"

    def explain(self, trace, tokens):
        return np.full((len(tokens), _n_image(trace)), 1e300)  # inf at float32


class ReturnsNone(Method):
    name = "hx-none"

    def explain(self, trace, tokens):
        return None


class Exits(Method):
    name = "hx-exits"

    def explain(self, trace, tokens):
        raise SystemExit(0)


HOSTILE_NAME = "</script><script>alert(1)</script>"


class Hostile(Fine):
    name = HOSTILE_NAME


class Registering:
    """A plugin object registering ``methods`` (pluggy takes any object with hooks)."""

    def __init__(self, methods):
        self.methods = methods

    @hookimpl
    def register_methods(self, register):
        for method in self.methods:
            register(method)


@pytest.fixture
def hostile_methods(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    pm = registry.PluginManager(list(metadata.entry_points(group=registry.GROUP))).load()
    info = pm.add_plugin(Registering([Fine, Raises, Buggy, WrongShape, NotFinite, Overflows,
                                      ReturnsNone, Exits, Hostile]))
    assert not info.broken, info.error
    monkeypatch.setattr(registry, "_default", pm)
    return pm


@pytest.mark.parametrize(("bad", "phrase"), [
    ("hx-raises", "method 'hx-raises' failed: RuntimeError: kaput"),
    ("hx-buggy", "method 'hx-buggy' failed: TypeError: object of type 'NoneType' has no len()"),
    ("hx-shape", "method 'hx-shape' returned maps of shape (3, 3), expected (2, "),
    ("hx-nan", "method 'hx-nan' returned 1 NaN or infinite value(s)"),
    ("hx-overflow", "method 'hx-overflow' returned "),
    ("hx-none", "method 'hx-none' returned maps of shape ()"),
    ("hx-exits", "method 'hx-exits' failed: it called sys.exit(0)"),
])
def test_a_failing_method_is_one_line_and_the_others_are_written(bad, phrase, hostile_methods,
                                                                 model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, *explain_argv(model_dir, out, method=f"hx-fine,{bad}"))
    assert code == explain_cmd.PARTIAL == 3
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error:") and phrase in lines[0], err
    assert len(list((out / "hx-fine").glob("*.png"))) == 2
    assert not (out / bad).exists()
    page = (out / "index.html").read_text()
    assert "hx-fine" in page and bad not in page
    run = json.loads((out / "run.json").read_text())
    assert list(run["methods"]) == ["hx-fine"] and list(run["failed"]) == [bad]
    assert phrase in run["failed"][bad]["error"]
    assert "Traceback" in run["failed"][bad]["traceback"]  # kept for the bug report
    assert "open" in stdout


def test_when_every_method_fails_nothing_is_written_and_exit_is_2(hostile_methods, model_dir,
                                                                  tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *explain_argv(model_dir, out, method="hx-raises"))
    assert_one_line_error(code, err, "method 'hx-raises' failed: RuntimeError: kaput")
    assert list(out.iterdir()) == []
    code, _, err = run_cli(capsys, *explain_argv(model_dir, out, method="hx-raises,hx-shape"))
    assert code == 2 and len(error_lines(err)) == 2  # one line per failed method


def test_the_api_raises_a_method_failure_unless_asked_to_collect(hostile_methods, tiny_families,
                                                                 tiny_model):
    model = tiny_model(next(iter(tiny_families)))
    image = Image.new("RGB", (64, 48), (120, 30, 200))
    with pytest.raises(api.InvalidMapsError, match="'hx-nan' returned 1 NaN"):
        api.explain_many(model, image, "Describe.", ["hx-fine", "hx-nan"], max_new_tokens=2)
    with pytest.raises(RuntimeError, match="kaput"):  # the original exception, traceback intact
        api.explain(model, image, "Describe.", "hx-raises", max_new_tokens=2)
    failures = {}
    results = api.explain_many(model, image, "Describe.", ["hx-raises", "hx-fine"],
                               max_new_tokens=2, failures=failures)
    assert list(results) == ["hx-fine"] and isinstance(failures["hx-raises"], RuntimeError)
    with pytest.raises(api.InputError, match=r"tokens: \[7\] out of range"):
        api.explain_many(model, image, "Describe.", ["hx-fine"], max_new_tokens=2, tokens=[7])


def test_a_hostile_method_name_stays_text_in_the_page(hostile_methods, model_dir, tmp_path,
                                                      capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *explain_argv(model_dir, out, method=f"{HOSTILE_NAME},hx-fine"))
    assert code == 0, err
    page = parse_page((out / "index.html").read_text())
    assert page.scripts == 1
    assert page.maps_keys() == [HOSTILE_NAME, "hx-fine"]
    assert page.first_method() == HOSTILE_NAME
    assert page.option_values == [HOSTILE_NAME, "hx-fine"]
    folders = json.loads((out / "run.json").read_text())["folders"]
    assert folders[HOSTILE_NAME] == "script_script_alert_1_script"
    assert (out / "script_script_alert_1_script" / "maps.npz").exists()


def test_names_that_share_a_folder_get_their_own():
    assert explain_cmd.method_folders(["a<b", "a>b", "A_B", "c"]) == {
        "a<b": "a_b", "a>b": "a_b-2", "A_B": "A_B-3", "c": "c"}


def test_a_non_utf8_prompt_is_one_line_before_the_model_loads(model_dir, tmp_path, capsys,
                                                             no_model_load):
    # `--prompt $'\xff'`: Python decodes the undecodable byte to the surrogate U+DCFF
    code, _, err = run_cli(capsys, *explain_argv(model_dir, tmp_path / "out", "--prompt",
                                                 "a \udcff b"))
    assert_one_line_error(code, err, "--prompt", "not valid UTF-8", "character 2", "\\udcff")


def test_a_prompt_the_processor_refuses_names_the_image(tiny_families, tiny_dir, tmp_path,
                                                        capsys):
    if "qwen2-vl" not in tiny_families:
        pytest.skip("needs the qwen2-vl tiny model")
    folder = tiny_dir("qwen2-vl")
    code, _, err = run_cli(capsys, *explain_argv(folder, tmp_path / "out", "--prompt",
                                                 "<|image_pad|> what is this?"))
    assert_one_line_error(code, err, f"image {str(folder / 'demo.png')!r}",
                          "the model's processor cannot take the image(s) with this prompt",
                          "ValueError", "<|image_pad|>")


def test_running_out_of_memory_while_generating_is_one_line(model_dir, tmp_path, capsys,
                                                            monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(api, "generate_trace", oom)
    code, _, err = run_cli(capsys, *explain_argv(model_dir, tmp_path / "out"))
    assert_one_line_error(code, err, "demo.png", "generation failed", "OutOfMemoryError",
                          "80.00 GiB")


def test_a_corrupt_weights_file_is_one_line(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in model_dir.iterdir():
        if item.is_file() and item.name != "model.safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:999])
    code, _, err = run_cli(capsys, *explain_argv(broken, tmp_path / "out",
                                                 image=model_dir / "demo.png"))
    assert_one_line_error(code, err, "cannot load model", "broken-model", "SafetensorError")


# -- 3. plugins that exit, raise BaseExceptions, or register junk -------------------------------
PLUGIN_SOURCES = {
    "exits": "import sys\nsys.exit(3)\n",
    "exits_quietly": "raise SystemExit\n",
    "generator_exit": "raise GeneratorExit('closed')\n",
    "custom_base": "class Doom(BaseException):\n    pass\n\nraise Doom('the end')\n",
    "chatty": textwrap.dedent("""
        from mmxai.hookspecs import hookimpl
        from mmxai.method import Method
        print("hello from a plugin that prints at import")

        class Chatty(Method):
            name = "chatty-method"

        @hookimpl
        def register_methods(register):
            print("and while registering")
            register(Chatty)
        """),
    "hook_exits": textwrap.dedent("""
        import sys
        from mmxai.hookspecs import hookimpl

        @hookimpl
        def register_methods(register):
            sys.exit("bye")
        """),
    "two_hooks": textwrap.dedent("""
        from mmxai.hookspecs import hookimpl

        @hookimpl
        def register_methods(register):
            raise RuntimeError("methods hook broke")

        @hookimpl
        def register_metrics(register):
            raise GeneratorExit("metrics hook broke")
        """),
    "junk": textwrap.dedent("""
        from mmxai.hookspecs import hookimpl
        from mmxai.method import Method
        from mmxai.metric import Metric
        from mmxai.model import Model

        class NumberName(Method):
            name = 42

        class NotAMethod:
            name = "not-a-method"

        class StringArchitectures(Model):
            architectures = "LlamaForCausalLM"

        class Fine(Metric):
            name = "fine-metric"

        @hookimpl
        def register_methods(register):
            register(NumberName)

        @hookimpl
        def register_metrics(register):
            register(Fine)

        @hookimpl
        def register_datasets(register):
            register(NotAMethod)

        @hookimpl
        def register_models(register):
            register(StringArchitectures)
        """),
}


@pytest.fixture
def hostile_plugins(tmp_path, monkeypatch) -> list[metadata.EntryPoint]:
    for name, source in PLUGIN_SOURCES.items():
        (tmp_path / f"mmxai_hx_{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    return [metadata.EntryPoint(name=name, value=f"mmxai_hx_{name}", group=registry.GROUP)
            for name in PLUGIN_SOURCES]


def test_base_exceptions_at_import_or_in_hooks_break_only_their_plugin(hostile_plugins):
    pm = registry.PluginManager(hostile_plugins)
    info = {p.name: p for p in pm.plugins()}
    assert info["exits"].errors == [
        "import failed: SystemExit(3): the plugin called sys.exit()"]
    assert info["exits_quietly"].error == (
        "import failed: SystemExit(None): the plugin called sys.exit()")
    assert info["generator_exit"].error == "import failed: GeneratorExit: closed"
    assert info["custom_base"].error == "import failed: Doom: the end"
    assert info["hook_exits"].error == (
        "register_methods failed: SystemExit('bye'): the plugin called sys.exit()")
    assert not info["chatty"].broken and pm.names("methods") == ["chatty-method"]


def test_every_failing_hook_of_a_plugin_is_reported(hostile_plugins):
    two = {p.name: p for p in registry.PluginManager(hostile_plugins).plugins()}["two_hooks"]
    assert two.errors == ["register_methods failed: RuntimeError: methods hook broke",
                          "register_metrics failed: GeneratorExit: metrics hook broke"]
    assert two.error == "; ".join(two.errors)
    assert len(two.tracebacks) == 2
    assert two.as_dict()["errors"] == two.errors


def test_registering_junk_breaks_the_plugin_with_a_clear_error(hostile_plugins):
    pm = registry.PluginManager(hostile_plugins)
    junk = {p.name: p for p in pm.plugins()}["junk"]
    assert junk.errors == [
        "register_models failed: TypeError: model adapter StringArchitectures: `architectures` "
        "must be a list of class names, not str",
        "register_methods failed: TypeError: method NumberName: `name` is not a string: int 42",
        "register_datasets failed: TypeError: register() takes Dataset subclasses in "
        "register_datasets, not the class NotAMethod",
    ]
    assert junk.registered == {"metrics": ["fine-metric"]}  # the hook that worked


@pytest.mark.parametrize(("obj", "message"), [
    ("an instance", "takes Method subclasses in register_methods, not the str 'an instance'"),
    (type("Plain", (), {"name": "plain"}), "not the class Plain"),
    (type("Comma", (Method,), {"name": "a,b"}), "`name` 'a,b' holds ','"),
    (type("Dotted", (Method,), {"name": "tam.v2"}), "holds '.'"),
    (type("Spaced", (Method,), {"name": "two words"}), "holds ' '"),
    (type("Dash", (Method,), {"name": "-x"}), "starts with '-'"),
    (type("Empty", (Method,), {"name": ""}), "`name` is empty"),
    (type("NoneName", (Method,), {"name": None}), "is not a string: NoneType"),
])
def test_what_register_refuses(obj, message):
    pm = registry.PluginManager([]).load()
    info = pm.add_plugin(Registering([obj]))
    assert info.broken and message in info.error, info.error
    assert pm.names("methods") == []


def test_a_keyboard_interrupt_in_a_plugin_is_not_swallowed(tmp_path, monkeypatch):
    (tmp_path / "mmxai_hx_ctrl_c.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = registry.PluginManager([metadata.EntryPoint("ctrl_c", "mmxai_hx_ctrl_c",
                                                     registry.GROUP)])
    with pytest.raises(KeyboardInterrupt):
        pm.load()


class _Dist:
    """A distribution with hostile metadata (rich markup in its licence and version)."""

    name = "[bold]evil[/bold]-dist"
    version = "[/oops]"

    @property
    def metadata(self):
        import email.message

        message = email.message.Message()
        message["License-Expression"] = "[/not-a-tag] MIT"
        return message


class _EntryPoint:
    def __init__(self, name, value):
        self.name, self.value, self.dist = name, value, _Dist()

    def load(self):
        import importlib

        return importlib.import_module(self.value)


def test_mmxai_plugins_lists_every_broken_plugin_and_error(hostile_plugins, tmp_path,
                                                            monkeypatch, capsys):
    (tmp_path / "mmxai_hx_markup.py").write_text(PLUGIN_SOURCES["two_hooks"])
    monkeypatch.setenv("COLUMNS", "300")  # the table's cells are not folded
    entry_points = [*hostile_plugins, _EntryPoint("[red]markup[/red]", "mmxai_hx_markup")]
    monkeypatch.setattr(registry, "_default", registry.PluginManager(entry_points))
    code, stdout, err = run_cli(capsys, "plugins")
    assert code == 0 and "Traceback" not in err
    lines = [line for line in stdout.splitlines() if line.startswith("broken ")]
    assert "broken exits (?): import failed: SystemExit(3): the plugin called sys.exit()" in lines
    assert "broken two_hooks (?): register_methods failed: RuntimeError: methods hook broke" \
        in lines
    assert "broken two_hooks (?): register_metrics failed: GeneratorExit: metrics hook broke" \
        in lines
    assert ("broken [red]markup[/red] ([bold]evil[/bold]-dist): register_methods failed: "
            "RuntimeError: methods hook broke") in lines
    assert "[/oops]" in stdout and "[/not-a-tag] MIT" in stdout  # shown as text, not markup
    assert "hello from a plugin" not in stdout  # a plugin's prints go to stderr
    assert "9 plugins, 8 broken" in stdout
    code, stdout, _ = run_cli(capsys, "plugins", "--json")
    listed = {p["name"]: p for p in json.loads(stdout)}  # still valid JSON
    assert listed["two_hooks"]["errors"] == [
        "register_methods failed: RuntimeError: methods hook broke",
        "register_metrics failed: GeneratorExit: metrics hook broke"]


# -- 4. escaping: pages, index, Markdown, LaTeX --------------------------------------------------
class PageParser(HTMLParser):
    """What a browser would see: elements, the script's text, the tokens and options."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.scripts = 0
        self.tags: list[str] = []
        self.script_text = ""
        self.option_values: list[str] = []
        self.tokens: list[str] = []
        self.title = ""
        self._in: list[str] = []

    VOID = {"meta", "img", "input", "br", "link", "hr"}

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "option":
            self.option_values.append(attrs["value"])
        if tag == "span" and attrs.get("class") == "tok":
            self.tokens.append("")
        if any(name.startswith("on") for name in attrs):
            raise AssertionError(f"event handler attribute in <{tag}>: {attrs}")
        if tag not in self.VOID:
            self._in.append(tag)

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        where = self._in[-1] if self._in else ""
        if where == "script":
            self.script_text += data
        elif where == "span" and self.tokens:
            self.tokens[-1] += data
        elif where == "title":
            self.title += data

    def maps_keys(self) -> list[str]:
        return list(json.loads(re.search(r"const MAPS = (.*?);\n", self.script_text).group(1)))

    def first_method(self) -> str:
        return json.loads(re.search(r"let method = (.*?);\n", self.script_text).group(1))


def parse_page(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return parser


HOSTILE_TOKENS = ["</script><script>alert(1)</script>", "\"quoted' & <b>bold</b>",
                  "line\u2028sep\u2029para", "<!--", "<script>", "]]>", "\\u003c/script>",
                  "{title}", "\udcff"]


def test_a_page_with_hostile_names_and_tokens_has_only_its_own_script():
    names = [HOSTILE_NAME, "m\"'<&>\u2028", "{first}"]
    image = Image.new("RGB", (30, 20), (200, 100, 50))
    heat = viewer.heat_png(np.random.default_rng(0).random((4, 6)))
    methods = [viewer.PageMethod(n, [heat] * len(HOSTILE_TOKENS)) for n in names]
    title = "mmxai: </title><script>alert(2)</script>"
    text = viewer.html_page(title, image, HOSTILE_TOKENS, methods,
                            subtitle="prompt: '</p><script>alert(3)</script>'")
    text.encode("utf-8")  # writable: the lone surrogate became U+FFFD
    page = parse_page(text)
    assert page.scripts == 1 and page.tags.count("b") == 0
    assert page.maps_keys() == names and page.first_method() == names[0]
    assert page.option_values == names
    assert page.tokens == [t.replace("\udcff", "\ufffd") for t in HOSTILE_TOKENS]
    assert page.title == title
    assert "\u2028" not in page.script_text and "\u2029" not in page.script_text
    assert not re.search(r"<!--|<script|</script", page.script_text, re.IGNORECASE)


def test_two_methods_with_one_name_are_refused_by_the_page():
    image = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="same name"):
        viewer.html_page("t", image, ["a"], [viewer.PageMethod("m", [b"x"]),
                                             viewer.PageMethod("m", [b"y"])])


def test_hostile_file_names_in_the_index_page_and_the_terminal(model_dir, tmp_path, capsys):
    hostile = tmp_path / "<img src=x onerror=alert(1)>[bold].png"
    Image.open(model_dir / "demo.png").resize((64, 64)).save(hostile, format="PNG")
    out = tmp_path / "out[/x]"  # rich markup in a path must not crash the last print
    code, stdout, err = run_cli(capsys, "explain", model_dir, model_dir / "demo.png", hostile,
                                "--method", "example-norm", "--max-new-tokens", "2",
                                "--out", out)
    assert code == 0, err
    assert f"-> {out}/" in stdout
    index = parse_page((out / "index.html").read_text())
    assert index.tags.count("img") == 0 and index.scripts == 0
    assert index.title == f"mmxai: {model_dir}"
    page = parse_page((out / "image1.html").read_text())
    assert page.scripts == 1 and page.tags.count("img") == 2  # the photo and the map only


def test_markdown_cells_cannot_split_or_format():
    cell = md_escape("a|b *em* _u_ `code` [link](x) <script> &amp; ~~s~~ \\| line\nbreak")
    row = f"| {cell} | next |"
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]  # GFM: unescaped pipes
    assert len(cells) == 2 and cells[1] == "next"
    for ch in "|*_`[]<>&~":
        assert not re.search(rf"(?<!\\){re.escape(ch)}", cell.replace("\\\\", "")), ch
    assert "\n" not in cell


def test_latex_escapes_every_special_character():
    assert tex_escape("a_b & 50% $x$ #1 {y} ~ ^ \\ | < >\nz") == (
        r"a\_b \& 50\% \$x\$ \#1 \{y\} \textasciitilde{} \textasciicircum{} "
        r"\textbackslash{} \textbar{} \textless{} \textgreater{} z")


# -- 5. argparse and the operating system: one line, not a traceback -----------------------------
@pytest.mark.parametrize(("argv", "phrases"), [
    (["explain", "m", "i.png", "--max-new-tokens", "abc"],
     ["mmxai explain:", "argument --max-new-tokens:", "invalid int value: 'abc'"]),
    (["explain", "m"], ["mmxai explain:", "required: IMAGE"]),
    (["explain", "m", "i.png", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["tiny", "llava", "d", "--seed", "1.5"], ["mmxai tiny:", "invalid int value: '1.5'"]),
    (["no-such-command"], ["mmxai:", "invalid choice: 'no-such-command'"]),
    (["plugins", "--json", "extra"], ["unrecognized arguments: extra"]),
])
def test_usage_errors_are_one_line(argv, phrases, capsys):
    code, _, err = run_cli(capsys, *argv)
    line = assert_one_line_error(code, err, *phrases)
    assert "--help" in line and "usage:" not in err


def test_help_still_prints_and_exits_0(capsys):
    code, stdout, _ = run_cli(capsys, "explain", "--help")
    assert code == 0 and "--max-new-tokens" in stdout


@pytest.fixture
def raising_command(monkeypatch):
    """A command whose run raises whatever the test sets."""
    raised = {}

    def run(args):
        raise raised["exc"]

    module = type("Module", (), {"add_arguments": staticmethod(lambda parser: None),
                                 "run": staticmethod(run)})
    monkeypatch.setitem(cli.COMMANDS, "hx", ("mmxai_hx_raising_command", "raises"))
    monkeypatch.setitem(sys.modules, "mmxai_hx_raising_command", module)
    return raised


@pytest.mark.parametrize(("exc", "phrases"), [
    (PermissionError(errno.EACCES, "Permission denied", "/data/results.sqlite"),
     ["'/data/results.sqlite'", "Permission denied", "EACCES"]),
    (OSError(errno.ENOSPC, "No space left on device", "/out/x.png"),
     ["'/out/x.png'", "No space left on device", "ENOSPC"]),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "out/run.json"),
     ["'out/run.json'", "Is a directory"]),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "a", None, "b"),
     ["'a' -> 'b'", "No such file or directory"]),
])
def test_os_errors_on_user_paths_are_one_line(exc, phrases, raising_command, capsys):
    raising_command["exc"] = exc
    code, _, err = run_cli(capsys, "hx")
    assert_one_line_error(code, err, *phrases)


@pytest.mark.parametrize("exc", [
    OSError(errno.EBADF, "Bad file descriptor"),  # no path: our bug
    OSError(errno.EIO, "Input/output error", "x"),  # not something the user did
    TypeError("a bug in mmxai"),
])
def test_bugs_keep_their_traceback(exc, raising_command, capsys):
    raising_command["exc"] = exc
    with pytest.raises(type(exc)):
        cli.main(["hx"])


def test_a_closed_pipe_ends_quietly(raising_command, capsys):
    raising_command["exc"] = BrokenPipeError(errno.EPIPE, "Broken pipe")
    code, stdout, err = run_cli(capsys, "hx")
    assert code == cli.BROKEN_PIPE and stdout == "" and err == ""


def test_error_lines_survive_undecodable_bytes(capsys):
    cli.error("file 'caf\udce9.png': not found")
    err = capsys.readouterr().err
    assert err.strip() == "error: file 'caf\\udce9.png': not found"


def test_keyboard_interrupt_is_130(raising_command, capsys):
    raising_command["exc"] = KeyboardInterrupt()
    code, _, err = run_cli(capsys, "hx")
    assert code == 130 and error_lines(err) == ["error: interrupted"]



# -- 6. the audit's findings: limits, paths, hub names, quiet runs, MMXAI_PLUGINS, overwrites --
@pytest.mark.parametrize(("value", "phrases"), [
    ("0", ["--max-new-tokens 0: must be from 1 to 4096"]),
    ("-1", ["--max-new-tokens -1: must be from 1 to 4096"]),
    ("4097", ["--max-new-tokens 4097: must be from 1 to 4096"]),
    ("99999999999999999999", ["--max-new-tokens 99999999999999999999: must be from 1 to 4096"]),
    ("2.5", ["argument --max-new-tokens:", "invalid int value: '2.5'"]),
])
def test_max_new_tokens_out_of_range_is_refused_before_the_model_loads(value, phrases,
                                                                       model_dir, tmp_path,
                                                                       capsys, no_model_load):
    argv = explain_argv(model_dir, tmp_path / "out")
    argv[argv.index("--max-new-tokens") + 1] = value
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *phrases)


def test_check_max_new_tokens_is_shared_by_the_commands():
    from mmxai.commands.common import check_max_new_tokens

    assert check_max_new_tokens(32) == 32
    with pytest.raises(cli.MMXAIError, match=r"^--max-new-tokens 0: must be from 1 to 4096"):
        check_max_new_tokens(0)
    with pytest.raises(cli.MMXAIError, match=r"^--max-new-tokens '3': expected a whole number"):
        check_max_new_tokens("3")


@pytest.mark.parametrize("out", ["", " "])
def test_an_empty_out_is_refused_not_the_current_folder(out, model_dir, tmp_path, capsys,
                                                        monkeypatch, no_model_load):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *explain_argv(model_dir, out))
    assert_one_line_error(code, err, "argument --out: an empty folder name")
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder


def test_an_empty_tiny_dir_is_refused(tiny_families, tmp_path, capsys, monkeypatch,
                                      no_tiny_build):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "tiny", next(iter(tiny_families)), "")
    assert_one_line_error(code, err, "mmxai tiny: argument dir: an empty folder name")
    assert list(tmp_path.iterdir()) == []



@pytest.mark.parametrize(("model", "cause"), [
    ("/nonexist/model", "no such folder"),
    ("models/typo/", "no such folder"),
    ("./typo", "no such folder"),
    ("models/typo", "no such folder here, and the Hugging Face hub cannot be reached"),
    ("some-org/some-model", "no such folder here, and the Hugging Face hub cannot be reached"),
])
def test_a_mistyped_folder_or_unreachable_hub_name_is_one_line_at_once(model, cause, tmp_path,
                                                                       capsys, unreachable_hub,
                                                                       no_model_load):
    code, _, err = run_cli(capsys, "explain", model, _demo(tmp_path), "--out", tmp_path / "o")
    line = assert_one_line_error(code, err, f"cannot load model {model!r}: {cause}")
    assert len(unreachable_hub) <= 1 and "Retry" not in err, line


def test_a_hub_name_without_network_prints_no_retry_lines(tmp_path, capsys):
    """Not patched: the real huggingface_hub, asked once (offline here, or a 401/404 where the
    hub answers): one line, never its retry log."""
    code, _, err = run_cli(capsys, "explain", "some-org/some-model", _demo(tmp_path),
                           "--out", tmp_path / "o")
    assert_one_line_error(code, err, "cannot load model 'some-org/some-model': no such folder "
                                     "here, and")
    assert "Retry" not in err and "thrown while requesting" not in err


def test_hf_hub_offline_names_the_variable(tmp_path, capsys, monkeypatch, no_model_load):
    from huggingface_hub import constants

    from mmxai import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "_cached_config", lambda repo_id: None)
    code, _, err = run_cli(capsys, "explain", "org/name", _demo(tmp_path), "--out", tmp_path / "o")
    assert_one_line_error(code, err, "cannot load model 'org/name': no such folder here, and it "
                                     "is not in the Hugging Face cache (HF_HUB_OFFLINE is set")


def test_architectures_as_a_string_is_named_before_the_model_loads(model_dir, tmp_path, capsys,
                                                                   no_model_load):
    folder = tmp_path / "strarch"
    folder.mkdir()
    for item in model_dir.iterdir():
        if item.is_file():
            (folder / item.name).write_bytes(item.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config,
                                                   "architectures": config["architectures"][0]}))
    code, _, err = run_cli(capsys, *explain_argv(folder, tmp_path / "out"))
    assert_one_line_error(code, err, "config.json: \"architectures\" must be a list of class "
                                     "names", f"got str '{config['architectures'][0]}'")


def _demo(tmp_path: Path) -> Path:
    path = tmp_path / "demo.png"
    if not path.exists():
        Image.new("RGB", (32, 32), "red").save(path)
    return path


def test_a_successful_run_leaves_stderr_empty(tiny_families, tiny_dir, tmp_path):
    """--max-new-tokens 2 is below the saved folder's min_new_tokens (4): transformers warns
    "Unfeasible length constraints" twice; the command shows none of it, nor a progress
    display's blank line off a terminal."""
    import subprocess

    folder = tiny_dir("llava")
    assert json.loads((folder / "generation_config.json").read_text())["min_new_tokens"] == 4
    done = subprocess.run([sys.executable, "-m", "mmxai.cli", "explain", str(folder),
                           str(folder / "demo.png"), "--method", "centre",
                           "--max-new-tokens", "2", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "2 tokens x 1 method(s)" in done.stdout


def test_transformers_warnings_are_silenced_in_the_cli_only(tiny_dir, tmp_path, capsys):
    import warnings

    folder = tiny_dir("llava")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, _, err = run_cli(capsys, "explain", folder, folder / "demo.png", "--method",
                               "centre", "--max-new-tokens", "2", "--out", tmp_path / "out")
    assert code == 0, err
    assert [str(w.message) for w in seen if "transformers" in w.filename] == []
    with warnings.catch_warnings(record=True) as seen:  # the API leaves them to the caller
        warnings.simplefilter("always")
        api.explain(str(folder), folder / "demo.png", "x", "centre", max_new_tokens=2)
    assert any("Unfeasible length constraints" in str(w.message) for w in seen)


@pytest.fixture
def plugins_env(monkeypatch):
    """Set MMXAI_PLUGINS for a test; the process-wide manager is reloaded before and after."""
    def set_to(value: str) -> None:
        monkeypatch.setenv(registry.ENV_VAR, value)
        registry.reset()

    yield set_to
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    registry.reset()


@pytest.mark.parametrize(("value", "phrase"), [
    ("nosuch", "(MMXAI_PLUGINS='nosuch' loads only the plugins it names; 'nosuch' matched no "
               "plugin; unset it to load every installed plugin)"),
    ("", "(MMXAI_PLUGINS is set but empty, so no plugin loads; unset it to load every "
         "installed plugin)"),
])
def test_an_unknown_method_names_mmxai_plugins_when_it_is_set(value, phrase, plugins_env,
                                                              model_dir, tmp_path, capsys,
                                                              no_model_load):
    plugins_env(value)
    code, _, err = run_cli(capsys, "explain", model_dir, _demo(tmp_path), "--out",
                           tmp_path / "o")
    assert_one_line_error(code, err, "unknown method 'tam'; available: none", phrase)


def test_the_manager_says_which_mmxai_plugins_names_matched_nothing(plugins_env):
    plugins_env("nosuch, mmxai ,also-missing")
    manager = registry.manager()
    assert manager.unmatched() == ["also-missing", "nosuch"]
    assert "tam" in manager.names("methods")
    plugins_env("mmxai")
    assert registry.manager().unmatched() == [] and registry.manager().limited_by() == (
        "MMXAI_PLUGINS='mmxai' loads only the plugins it names")


def test_unset_mmxai_plugins_adds_nothing_to_the_error(plugins_env, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    registry.reset()
    with pytest.raises(registry.UnknownNameError) as caught:
        registry.manager().get("methods", "nosuch")
    assert "MMXAI_PLUGINS" not in str(caught.value)


def test_tiny_refuses_to_overwrite_a_model_folder(tiny_families, tmp_path, capsys,
                                                  no_tiny_build):
    family = next(iter(tiny_families))
    for marker in ["config.json", "model.safetensors", "weights-00001.safetensors"]:
        folder = tmp_path / marker.replace(".", "_")
        folder.mkdir()
        (folder / marker).write_text("a model already here")
        code, _, err = run_cli(capsys, "tiny", family, folder)
        assert_one_line_error(code, err, f"DIR {str(folder)!r} already holds a model ({marker})",
                              "pass --overwrite")
        assert (folder / marker).read_text() == "a model already here"


def test_save_tiny_refuses_a_model_folder_before_building(tiny_families, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(tiny_cmd.InputError, match=r"^folder '.*' already holds a model "
                                                  r"\(config.json\)"):
        tiny_cmd.save_tiny(next(iter(tiny_families)), tmp_path)
    assert (tmp_path / "config.json").read_text() == "{}"


def test_tiny_overwrite_replaces_the_model(tiny_families, tmp_path, capsys, monkeypatch):
    built = []
    monkeypatch.setattr(tiny_cmd, "save_tiny",
                        lambda family, folder, seed=0, overwrite=False:
                        built.append(overwrite) or tiny_cmd.find_family(family).tiny(seed))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    code, _, err = run_cli(capsys, "tiny", next(iter(tiny_families)), folder, "--overwrite")
    assert code == 0 and built == [True], err
    code, _, _ = run_cli(capsys, "tiny", next(iter(tiny_families)), tmp_path / "empty")
    assert code == 0 and built == [True, True]  # an empty or new folder needs no flag
