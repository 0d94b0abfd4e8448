"""Plugin discovery: broken plugins are contained, names are owned once, MMXAI_PLUGINS
filters, and the out-of-tree example plugin is found, listed and run."""

from __future__ import annotations

import email.message
import importlib
import inspect
import json
import textwrap
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmxai import cli, hookspecs, registry
from mmxai.api import explain
from mmxai.errors import DuplicateNameError, UnknownNameError
from mmxai.hookspecs import hookimpl
from mmxai.method import Method

GOOD = """
from mmxai.hookspecs import hookimpl
from mmxai.method import Method

class Good(Method):
    name = "good-method"

@hookimpl
def register_methods(register):
    register(Good)
"""
BROKEN_IMPORT = "raise ImportError('needs a package that is not installed')\n"
RAISING_HOOK = """
from mmxai.hookspecs import hookimpl
from mmxai.method import Method

class Half(Method):
    name = "half-registered"

@hookimpl
def register_methods(register):
    register(Half)
    raise RuntimeError("hook exploded")
"""
DUPLICATE = """
from mmxai.hookspecs import hookimpl
from mmxai.method import Method

class Impostor(Method):
    name = "good-method"

class Own(Method):
    name = "own-method"

@hookimpl
def register_methods(register):
    register(Own)
    register(Impostor)
"""
# Loaded in name order (no distribution): "good" owns "good-method" before "second" tries.
PLUGINS = {"good": GOOD, "broken": BROKEN_IMPORT, "raising": RAISING_HOOK, "second": DUPLICATE}


@pytest.fixture
def entry_points(tmp_path, monkeypatch) -> list[metadata.EntryPoint]:
    """One entry point per test plugin, each a module written to a temporary folder."""
    for name, source in PLUGINS.items():
        (tmp_path / f"mmxai_test_{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return [metadata.EntryPoint(name=name, value=f"mmxai_test_{name}", group=registry.GROUP)
            for name in PLUGINS]


def test_broken_plugins_are_recorded_and_the_rest_works(entry_points, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    pm = registry.PluginManager(entry_points)
    info = {p.name: p for p in pm.plugins()}
    assert info["broken"].broken
    assert info["broken"].error.startswith("import failed: ImportError: needs a package")
    assert not info["good"].broken and info["good"].registered == {"methods": ["good-method"]}
    assert pm.get("methods", "good-method").name == "good-method"
    with pytest.raises(UnknownNameError, match="broken plugins: .*broken"):
        pm.get("methods", "no-such-method")


def test_a_hook_that_raises_registers_nothing(entry_points):
    pm = registry.PluginManager(entry_points)
    raising = {p.name: p for p in pm.plugins()}["raising"]
    assert raising.error == "register_methods failed: RuntimeError: hook exploded"
    assert raising.registered == {}
    assert "half-registered" not in pm.names("methods")  # staged, then dropped


def test_a_duplicate_name_is_an_error_naming_both_providers(entry_points):
    pm = registry.PluginManager(entry_points)
    second = {p.name: p for p in pm.plugins()}["second"]
    assert second.error.startswith("register_methods failed: DuplicateNameError: method "
                                   "'good-method' is registered twice")
    assert "plugin 'good'" in second.error and "plugin 'second'" in second.error
    # the first owner keeps the name; the clashing plugin registers nothing at all
    assert pm.provider("methods", "good-method").name == "good"
    assert "own-method" not in pm.names("methods") and second.registered == {}


@dataclass
class FakeDistribution:
    name: str
    version: str = "1.0"

    @property
    def metadata(self) -> email.message.Message:
        message = email.message.Message()
        message["License-Expression"] = "Apache-2.0"
        return message


@dataclass
class FakeEntryPoint:
    """An entry point with a distribution (``metadata.EntryPoint`` only gets one when found
    installed); the registry reads ``name``, ``value``, ``dist`` and ``load()``."""

    name: str
    value: str
    dist: FakeDistribution

    def load(self):
        return importlib.import_module(self.value)


def test_a_third_party_plugin_cannot_take_a_builtin_name(entry_points):
    # "aaa-plugin" sorts before "mmxai", yet the built-in must keep its name
    builtin = FakeEntryPoint("good", "mmxai_test_good", FakeDistribution("mmxai"))
    intruder = FakeEntryPoint("good", "mmxai_test_second", FakeDistribution("aaa-plugin"))
    pm = registry.PluginManager([intruder, builtin])
    assert pm.provider("methods", "good-method").distribution == "mmxai"
    listed = {(p.distribution, p.name): p for p in pm.plugins()}
    assert set(listed) == {("mmxai", "good"), ("aaa-plugin", "good")}  # same entry-point name
    assert "by plugin 'good' (mmxai) and by plugin 'good' (aaa-plugin)" in \
        listed["aaa-plugin", "good"].error
    assert listed["aaa-plugin", "good"].license == "Apache-2.0"


def test_register_raises_the_duplicate_inside_the_hook():
    class First(Method):
        name = "same"

    class Second(Method):
        name = "same"

    caught = []

    class Catching:
        @staticmethod
        @hookimpl
        def register_methods(register):
            try:
                register(Second)
            except DuplicateNameError as exc:
                caught.append(str(exc))

    pm = registry.PluginManager([]).load()
    pm.add_plugin(Registering([First]))
    pm.add_plugin(Catching)
    assert len(caught) == 1 and "'same' is registered twice" in caught[0]
    assert pm.get("methods", "same") is First


class Registering:
    """A plugin object registering ``methods`` (pluggy takes any object with hooks)."""

    def __init__(self, methods):
        self.methods = methods

    @hookimpl
    def register_methods(self, register):
        for method in self.methods:
            register(method)


@pytest.mark.parametrize(("allowed", "loaded"), [
    ("good", ["good"]),
    ("good, broken", ["broken", "good"]),
    ("second", ["second"]),  # alone, nothing clashes
    ("", []),
])
def test_mmxai_plugins_limits_loading(entry_points, monkeypatch, allowed, loaded):
    monkeypatch.setenv(registry.ENV_VAR, allowed)
    pm = registry.PluginManager(entry_points)
    assert sorted(p.name for p in pm.plugins()) == loaded


def test_mmxai_plugins_accepts_a_distribution_name(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "mmxai-example-plugin")
    pm = registry.PluginManager()
    assert [p.name for p in pm.plugins()] == ["example"]
    assert pm.names("methods") == ["example-norm"] and pm.names("models") == []


def test_mmxai_plugins_names_that_match_nothing_are_said(entry_points, monkeypatch, capsys):
    """A typo in MMXAI_PLUGINS is not a silently empty selection: `mmxai plugins` names it
    (under the table, and on stderr beside --json)."""
    monkeypatch.setenv(registry.ENV_VAR, "good,goood")
    monkeypatch.setattr(registry, "_default", registry.PluginManager(entry_points))
    assert cli.main(["plugins"]) == 0
    assert "'goood' matched no plugin" in capsys.readouterr().out
    assert cli.main(["plugins", "--json"]) == 0
    captured = capsys.readouterr()
    assert [p["name"] for p in json.loads(captured.out)] == ["good"]
    assert "'goood' matched no plugin" in captured.err


def test_cli_lists_broken_plugins_and_keeps_working(entry_points, monkeypatch, capsys,
                                                    tiny_families, tiny_dir, tmp_path):
    real = list(metadata.entry_points(group=registry.GROUP))
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    monkeypatch.setattr(registry, "_default", registry.PluginManager(real + entry_points))
    assert cli.main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["broken"]["error"].startswith("import failed")
    assert listed["good"]["error"] is None
    assert listed["example"]["registered"] == {"methods": ["example-norm"]}
    assert cli.main(["plugins"]) == 0
    table = capsys.readouterr().out
    assert "broken broken (?): import failed: ImportError" in table and "3 broken" in table
    folder = tiny_dir(next(iter(tiny_families)))
    assert cli.main(["explain", str(folder), str(folder / "demo.png"), "--method",
                     "example-norm", "--max-new-tokens", "4", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "index.html").exists()


def test_example_plugin_is_discovered_with_its_metadata(capsys):
    assert cli.main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    example = listed["example"]
    assert example["distribution"] == "mmxai-example-plugin"
    assert example["version"] == metadata.version("mmxai-example-plugin") == "0.1.0"
    assert example["license"] == "MIT"
    assert example["module"] == "mmxai_example_plugin"
    assert example["registered"] == {"methods": ["example-norm"]}
    assert example["error"] is None


def test_mmxai_plugins_shows_every_summary_and_what_each_method_needs(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # the table's cells wrap less
    assert cli.main(["plugins", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    pm = registry.manager()
    for kind in ("methods", "metrics", "datasets"):
        shown = {name: summary for p in listed
                 for name, summary in p["summaries"].get(kind, {}).items()}
        assert shown == {name: cls.summary for name, cls in pm.items(kind).items()}, kind
    needs = {name: n for p in listed for name, n in p["needs"].get("methods", {}).items()}
    assert needs["gradcam"]["gradients"] and needs["msea"]["extra_passes"]
    assert needs["attention"]["attentions"] and not needs["tam"]["attentions"]
    example = {p["name"]: p for p in listed}["example"]
    assert example["summaries"] == {"methods": {"example-norm": pm.get(
        "methods", "example-norm").summary}}
    assert cli.main(["plugins"]) == 0
    table = " ".join(capsys.readouterr().out.split())  # rich wraps long cells
    assert "Token Activation Map:" in table and "needs: own backward passes" in table
    assert "adapter for LlavaForConditionalGeneration" in table


def test_example_method_is_the_l2_norm_of_image_token_states(tiny_families, tiny_model):
    model = tiny_model(next(iter(tiny_families)))
    image = Image.new("RGB", (64, 48), (120, 30, 200))
    result = explain(model, image, "Describe the image.", "example-norm", max_new_tokens=3,
                     power=2.0)
    states = result.trace.hidden[torch.as_tensor(result.trace.image_positions)]
    expected = (states.norm(dim=-1) ** 2).numpy()
    assert result.maps.shape == (result.trace.n_generated, expected.shape[0])
    for row in result.maps:
        np.testing.assert_allclose(row, expected, rtol=1e-5)


def test_example_method_runs_through_mmxai_explain(tiny_families, tiny_dir, tmp_path, capsys):
    folder = tiny_dir(next(iter(tiny_families)))
    out = tmp_path / "out"
    code = cli.main(["explain", str(folder), str(folder / "demo.png"), "--method",
                     "example-norm", "--option", "example-norm.power=0.5",
                     "--max-new-tokens", "4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    maps = np.load(out / "example-norm" / "maps.npz")["maps"]
    assert maps.shape[0] == 4 and (maps > 0).all()
    assert json.loads((out / "run.json").read_text())["methods"] == {
        "example-norm": {"power": 0.5}}
    assert len(list((out / "example-norm").glob("*.png"))) == 4


def test_every_hook_is_documented_with_its_signature():
    docs = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("register_")]
    assert sorted(hooks) == sorted(f"register_{kind}" for kind in hookspecs.KINDS)
    for name in hooks:
        parameters = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"`{name}({parameters})`" in docs, name
