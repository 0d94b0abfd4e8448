"""The Python API beyond explain: ``mmxai.compare``, ``mmxai.write_viewer``, and
``mmxai.load_model``'s quiet loading and Qwen's pixel budget."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
from PIL import Image

import mmxai
from mmxai import arguments, cli, compare_api
from mmxai.datasets.synthetic import DATA
from mmxai.errors import InputError, MMXAIError

SCENE = DATA / "images" / "0000.png"
CHEAP = dict(limit=2, bootstrap=20, progress=False)


def test_compare_returns_the_leaderboard_as_rows_and_resumes_with_the_command(tmp_path,
                                                                             capsys):
    """The bundled model on the bundled benchmark: one row per method with every metric's
    value inside its interval, the files the command writes, and a store the command then
    resumes without computing anything (one code path, one run key)."""
    out = tmp_path / "results"
    result = mmxai.compare(methods=["tam", "random"], metrics="obj-iou,deletion", out=out,
                           deletion={"steps": 2, "max_tokens": 1}, **CHEAP)
    assert isinstance(result, mmxai.Comparison) and result.out == out
    assert sorted(p.name for p in result.files) == sorted(
        ["leaderboard.md", "leaderboard.tex", "leaderboard.csv", "leaderboard.json",
         "references.bib"])
    assert all(p.is_file() for p in result.files)
    rows = result.rows()
    assert [(r["model"], r["method"]) for r in rows] == [("testbed16", "random"),
                                                        ("testbed16", "tam")]
    for row in rows:
        assert row["dataset"] == "synthetic16" and row["n"] == 2 and row["failed"] == 0
        for label in ("obj-iou", "deletion[max_tokens=1,steps=2]"):
            value, low, high = row[label], row[f"{label}.low"], row[f"{label}.high"]
            assert math.isfinite(value) and low <= value <= high, (label, row)
            assert row[f"{label}.n"] == 2 and row[f"{label}.failed"] == 0
        assert row["label"] == row["method"] and len(row["options_hash"]) == 12
    best = [r for r in rows if r["obj-iou.best"]]
    assert len(best) == 1 and best[0]["obj-iou.p_vs_best"] is None
    assert [s.evaluated for s in result.summaries] == [2]
    code = cli.main(["compare", "--method", "tam", "random", "--metric", "obj-iou",
                     "deletion", "--option", "deletion.steps=2", "--option",
                     "deletion.max_tokens=1", "--limit", "2", "--bootstrap", "20",
                     "--workers", "1", "--no-progress", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert stdout.startswith("testbed16: 2 samples, 0 evaluated now, 2 already stored"), stdout


def test_compare_names_models_by_the_labels_given(tmp_path):
    result = mmxai.compare(models="testbed", labels={"testbed": "Testbed (8x8)"},
                           methods="random", metrics="obj-iou", out=tmp_path / "r", **CHEAP)
    assert [row["model"] for row in result.rows()] == ["Testbed (8x8)"]
    assert result.summaries[0].model == "Testbed (8x8)"


@pytest.mark.parametrize(("kwargs", "phrase"), [
    (dict(models=[]), "models []"),
    (dict(labels={"elsewhere": "x"}), "'elsewhere=x': expected MODEL=LABEL"),
    (dict(labels=["testbed"]), "labels ['testbed']: expected a dict"),
    (dict(models=["testbed", 3]), "models: 3 is not a model"),
    (dict(methods=3), "methods 3"),
    (dict(metrics=""), "metrics: no name given"),
    (dict(limit=0), "limit 0: expected a whole number >= 1"),
    (dict(seed=-1), "seed -1"),
    (dict(bootstrap=1.5), "bootstrap 1.5"),
    (dict(max_new_tokens=0), "max_new_tokens 0"),
    (dict(batch_size=True), "batch_size True"),
    (dict(dtype="float8"), "dtype 'float8'"),
    (dict(device="tpu"), "device 'tpu'"),
    (dict(progress="yes"), "progress 'yes': expected True or False"),
    (dict(out=""), "out '': expected a folder"),
    (dict(protocol="nope"), "'nope': unknown protocol"),
    (dict(deletion=5), "deletion=5: expected a dict"),
    (dict(max_new_token=8), "compare() has no setting of that name"),
    (dict(deletion={"steps": object()}), "option deletion.steps=<object"),
    (dict(deletion={"steps": "many"}), "deletion.steps"),
    (dict(tam={"eci": False}, metrics="obj-iou", methods="gradcam"), "'tam' is not run here"),
])
def test_compare_refuses_a_bad_argument_in_one_line_before_anything_runs(kwargs, phrase,
                                                                          tmp_path):
    out = tmp_path / "results"
    with pytest.raises(MMXAIError) as caught:
        mmxai.compare(out=kwargs.pop("out", out), **kwargs)
    message = str(caught.value)
    assert phrase in message and "\n" not in message, message
    assert not out.exists()  # nothing written


def test_option_values_are_written_as_the_command_line_reads_them():
    specs = arguments.option_specs({
        "tam": {"eci": False, "layer": None},
        "deletion": {"steps": 16, "fraction": 0.25, "order": [0.5, 1]},
        "folder": {"root": Path("/data/x"), "labels": {"a": 1}}})
    assert specs == ("tam.eci=false", "tam.layer=none", "deletion.steps=16",
                     "deletion.fraction=0.25", "deletion.order=[0.5, 1]",
                     "folder.root=/data/x", 'folder.labels={"a": 1}')


def test_write_viewer_writes_the_page_mmxai_explain_writes(tmp_path, monkeypatch, capsys):
    """The same model, image, prompt and methods: the API's page is byte for byte the
    command's (the text half of TAM included)."""
    monkeypatch.chdir(tmp_path)  # no ./testbed here: the bundled model, without a note
    methods = ["tam", "gradcam"]
    code = cli.main(["explain", "testbed", str(SCENE), "--method", *methods,
                     "--max-new-tokens", "4", "--out", str(tmp_path / "cli")])
    assert code == 0, capsys.readouterr().err
    model = mmxai.load_model("testbed")
    results = mmxai.explain_many(model, SCENE, "Describe the image.", methods,
                                 max_new_tokens=4)
    page = mmxai.write_viewer(results, tmp_path / "api", title="mmxai: testbed")
    assert page == tmp_path / "api" / "index.html"
    assert page.read_bytes() == (tmp_path / "cli" / "index.html").read_bytes()
    single = mmxai.write_viewer(results["gradcam"], tmp_path / "one")
    text = single.read_text(encoding="utf-8")
    assert '"gradcam"' in text and '"tam"' not in text
    assert f"<title>mmxai: {model.model_id}</title>" in text


def test_write_viewer_refuses_what_is_not_one_answer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = mmxai.load_model("testbed")
    long = mmxai.explain(model, SCENE, "Describe the image.", "random", max_new_tokens=4)
    short = mmxai.explain(model, SCENE, "Describe the image.", "tam", max_new_tokens=2)
    some = mmxai.explain(model, SCENE, "Describe the image.", "tam", max_new_tokens=4,
                         tokens=[0, 1])
    cases = [([long, short], "another answer"), ([long, some], "other tokens"),
             ({}, "none given"), ([long, long], "given twice"), ("page", "expected an "
                                                                 "Explanation")]
    for explanations, phrase in cases:
        with pytest.raises(InputError, match=phrase):
            mmxai.write_viewer(explanations, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(InputError, match="out .*cannot"):
        mmxai.write_viewer(long, tmp_path / "file")


def test_load_model_is_quiet_unless_verbose(tiny_families, tiny_dir, monkeypatch, capsys):
    monkeypatch.delenv("MMXAI_VERBOSE", raising=False)
    folder = tiny_dir(next(iter(tiny_families)))
    capsys.readouterr()
    mmxai.load_model(folder)
    assert "Loading weights" not in capsys.readouterr().err
    monkeypatch.setenv("MMXAI_VERBOSE", "1")
    mmxai.load_model(folder)
    assert "Loading weights" in capsys.readouterr().err


def test_load_model_says_which_testbed_it_took(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "testbed").mkdir()  # as in a checkout: the package's folder, not a model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mmxai.load_model("testbed")
    notes = [str(w.message) for w in caught if issubclass(w.category, mmxai.loading.LoadNote)]
    assert notes == [f"model 'testbed': the bundled model ({model.model_id}); the folder "
                     "./testbed here holds no model (no config.json)"]


def grids(model: mmxai.Model, side: int = 64) -> list[tuple[int, int]]:
    return [g.shape for g in model.build_inputs([Image.new("RGB", (side, side))], "hi").grids]


@pytest.mark.parametrize(("family", "merged"), [("qwen2-vl", 28), ("glm4v", 28),
                                                ("qwen3-vl", 32)])
def test_pixel_budget_sets_qwen_grids(family, merged, tiny_dir):
    """min_pixels grows a small image's grid and max_pixels shrinks it, as the processors'
    own bounds do (GLM-4V counts its two frames against them). ``merged``: the side in
    pixels of one image token (patch x merge size)."""
    folder = tiny_dir(family)
    default = grids(mmxai.load_model(folder))
    grown = grids(mmxai.load_model(folder, min_pixels=merged * merged * 36,
                                   max_pixels=merged * merged * 64))
    assert grown == [(6, 6)] and grown != default
    model = mmxai.load_model(folder)
    mmxai.set_pixel_budget(model, max_pixels=merged * merged * 4)
    assert grids(model, 256) == [(2, 2)]
    with pytest.raises(InputError, match=f"min_pixels 100000 is above max_pixels "
                                         f"{merged * merged * 4}"):
        mmxai.set_pixel_budget(model, min_pixels=100_000)
    assert grids(model, 256) == [(2, 2)]  # refused: nothing changed


def test_pixel_budget_is_refused_in_one_line(tiny_dir, tmp_path):
    for kwargs, phrase in [(dict(max_pixels=0), "max_pixels 0"),
                           (dict(min_pixels=1.5), "min_pixels 1.5"),
                           (dict(max_pixels=True), "max_pixels True"),
                           (dict(min_pixels=10, max_pixels=5),
                            "min_pixels 10 is above max_pixels 5")]:
        # checked before the folder is even looked at
        with pytest.raises(InputError, match=phrase):
            mmxai.load_model(tmp_path / "no-such-folder", **kwargs)
    with pytest.raises(InputError, match="has no pixel budget; only the Qwen-like"):
        mmxai.load_model(tiny_dir("llava"), max_pixels=28 * 28 * 16)


def test_the_package_exports_the_api():
    from mmxai import pixels

    assert mmxai.load_model is mmxai.api.open_pretrained
    assert mmxai.set_pixel_budget is pixels.set_pixel_budget
    for name in ("compare", "Comparison", "write_viewer"):
        assert name in mmxai.__all__ and getattr(mmxai, name) is getattr(compare_api, name)
