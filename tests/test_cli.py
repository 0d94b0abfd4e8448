"""The ``mmxai`` command line: explain on saved tiny models, tiny, and one-line errors."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmxai import cli, viewer
from mmxai.model import load_model

METHODS = ["tam", "example-norm"]
N_TOKENS = 4


def run_cli(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *phrases: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_compare_on_a_saved_tiny_model_of_each_family(tiny_family, tiny_dir, tmp_path, capsys):
    """The folder ``mmxai tiny`` writes (the hub's layout) through compare: a map method and
    a gradient method, a mask metric and a perturbation metric, every result ok."""
    import sqlite3

    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "compare", "--model", tiny_dir(tiny_family), "--dataset",
                           "synthetic", "--limit", "2", "--method", "tam", "gradcam",
                           "--metric", "obj-iou", "deletion", "--option", "deletion.steps=2",
                           "--option", "deletion.max_tokens=1", "--max-new-tokens", "3",
                           "--min-new-tokens", "3", "--bootstrap", "50", "--workers", "1",
                           "--no-progress", "--out", out)
    assert code == 0, err
    rows = sqlite3.connect(out / "results.sqlite").execute(
        "SELECT method, metric, status, error FROM results").fetchall()
    metrics = ("obj-iou", "deletion[max_tokens=1,steps=2]")
    assert {(method, metric) for method, metric, _, _ in rows} == {
        (method, metric) for method in ("tam", "gradcam") for metric in metrics}
    assert all(status == "ok" for _, _, status, _ in rows), rows


def test_explain_on_a_saved_tiny_model_of_each_family(tiny_family, tiny_dir, tmp_path,
                                                      capsys):
    folder = tiny_dir(tiny_family)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "explain", folder, folder / "demo.png",
                                "--method", *METHODS, "--max-new-tokens", N_TOKENS,
                                "--out", out)
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    words = run["tokens"]
    assert len(words) == N_TOKENS and set(run["methods"]) == set(METHODS)
    page = (out / "index.html").read_text()
    for name in METHODS:
        pngs = sorted((out / name).glob("*.png"))
        assert [p.name for p in pngs] == [f"{i:03d}_{viewer.safe_filename(w)}.png"
                                          for i, w in enumerate(words)]
        with Image.open(pngs[0]) as picture:
            assert picture.size == viewer.fit((256, 256))
        saved = np.load(out / name / "maps.npz")
        n_image = int(saved["grid_shapes"].prod(axis=1).sum())
        assert saved["maps"].shape == (N_TOKENS, n_image) and np.isfinite(saved["maps"]).all()
        assert list(saved["words"]) == words
        assert f'<option value="{name}">' in page
    # self-contained: every src/href is an embedded data URI, and the answer is clickable
    sources = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert sources and all(s.startswith("data:") for s in sources)
    assert not re.search(r"https?://", page)
    for i, word in enumerate(words):
        assert f'data-i="{i}" title="token {i}">{html.escape(word) or "&#8203;"}</span>' in page


def test_explain_several_images_writes_a_page_per_image(tiny_families, tiny_dir, tmp_path,
                                                        capsys):
    folder = tiny_dir(next(iter(tiny_families)))
    wide = tmp_path / "wide.jpg"
    Image.open(folder / "demo.png").resize((120, 60)).save(wide)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "explain", folder, folder / "demo.png", wide,
                           "--method", "example-norm", "--max-new-tokens", N_TOKENS,
                           "--out", out)
    assert code == 0, err
    index = (out / "index.html").read_text()
    assert 'href="image0.html"' in index and 'href="image1.html"' in index
    for k, size in enumerate([(256, 256), (120, 60)]):
        assert "data:image/jpeg;base64," in (out / f"image{k}.html").read_text()
        pngs = sorted((out / "example-norm" / f"image{k}").glob("*.png"))
        assert len(pngs) == N_TOKENS
        with Image.open(pngs[0]) as picture:
            assert picture.size == viewer.fit(size)


def test_tiny_command_saves_a_loadable_model(tiny_families, tmp_path, capsys):
    family = next(iter(tiny_families))
    code, stdout, err = run_cli(capsys, "tiny", family, tmp_path / "m")
    assert code == 0, err
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "demo.png").exists()
    model = load_model(str(tmp_path / "m"))
    assert type(model) is tiny_families[family]
    assert f"mmxai explain {tmp_path / 'm'}" in stdout


def test_tiny_unknown_family_lists_the_known_ones(tiny_families, tmp_path, capsys):
    code, _, err = run_cli(capsys, "tiny", "no-such-family", tmp_path / "m")
    assert_one_line_error(code, err, "no-such-family", *tiny_families)


@pytest.fixture
def bad_inputs(tiny_families, tiny_dir, tmp_path):
    folder = tiny_dir(next(iter(tiny_families)))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    alien = tmp_path / "alien-model"
    alien.mkdir()
    (alien / "config.json").write_text(json.dumps(
        {"architectures": ["AlienForConditionalGeneration"], "model_type": "llama"}))
    return {"model": folder, "image": folder / "demo.png", "corrupt": corrupt,
            "empty": empty, "alien": alien, "missing": tmp_path / "missing.png"}


@pytest.mark.parametrize(("case", "phrases"), [
    ("missing image", ["missing.png", "file not found"]),
    ("corrupt image", ["corrupt.png", "cannot be read as an image"]),
    ("empty model folder", ["cannot load model", "empty-model"]),
    ("unknown architecture", ["AlienForConditionalGeneration", "supported:"]),
    ("unknown method", ["unknown method 'no-such-method'", "available:", "example-norm"]),
    ("unknown option", ["has no option(s) colour"]),
    ("option for a method not run", ["'tam' is not run here"]),
    ("output folder is a file", ["--out", "cannot create the folder"]),
])
def test_explain_bad_input_is_one_line_and_exit_code_2(case, phrases, bad_inputs, tmp_path,
                                                       capsys):
    b = bad_inputs
    model, image, method, extra = b["model"], b["image"], "example-norm", []
    if case == "missing image":
        image = b["missing"]
    elif case == "corrupt image":
        image = b["corrupt"]
    elif case == "empty model folder":
        model = b["empty"]
    elif case == "unknown architecture":
        model = b["alien"]
    elif case == "unknown method":
        method = "no-such-method"
    elif case == "unknown option":
        extra = ["--option", "example-norm.colour=red"]
    elif case == "option for a method not run":
        extra = ["--option", "tam.alpha=1"]
    out = tmp_path / "out"
    if case == "output folder is a file":
        out.write_text("in the way")
    code, _, err = run_cli(capsys, "explain", model, image, "--method", method, *extra,
                           "--max-new-tokens", 2, "--out", out)
    assert_one_line_error(code, err, *phrases)
    assert not (out / "index.html").exists()


def test_help_imports_no_command_and_a_broken_command_is_one_line(tmp_path, monkeypatch,
                                                                  capsys):
    (tmp_path / "mmxai_test_broken_command.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "broken", ("mmxai_test_broken_command", "a broken one"))
    monkeypatch.setitem(cli.COMMANDS, "absent", ("mmxai_test_absent_command", "not written"))
    code, stdout, _ = run_cli(capsys, "--help")
    assert code == 0
    for name in ("explain", "compare", "leaderboard", "plugins", "tiny", "broken", "absent"):
        assert name in stdout
    code, _, err = run_cli(capsys, "broken")
    assert_one_line_error(code, err, "'broken' is not available", "RuntimeError: boom")
    code, _, err = run_cli(capsys, "absent", "--help")
    assert_one_line_error(code, err, "'absent' is not available", "mmxai_test_absent_command")
    code, stdout, _ = run_cli(capsys, "plugins", "--json")  # the others still work
    assert code == 0 and json.loads(stdout)


def test_usage_errors_exit_with_2(capsys):
    assert cli.main([]) == 2
    assert cli.main(["no-such-command"]) == 2
    assert cli.main(["explain"]) == 2  # missing MODEL and IMAGE
    assert cli.main(["--version"]) == 0
    assert "mmxai" in capsys.readouterr().out


def test_every_public_name_resolves():
    import mmxai

    for name in mmxai.__all__:
        assert getattr(mmxai, name) is not None, name
    with pytest.raises(AttributeError):
        _ = mmxai.no_such_name


def test_help_is_fast_because_it_imports_no_torch():
    script = ("import sys; from mmxai.cli import main; code = main(['--help']); "
              "sys.exit(code or ('torch' in sys.modules and 3))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "explain" in done.stdout


# -- quiet by default, --verbose; the bundled model by name ----------------------------------------
HF_BAR = "Loading weights"


def test_commands_hide_hugging_face_output_unless_verbose(tiny_families, tiny_dir, tmp_path,
                                                          monkeypatch, capsys):
    """Without --verbose no command prints transformers' Loading weights bar; --verbose,
    before or after the command's name, lets it through for that run only."""
    import os

    monkeypatch.delenv("MMXAI_VERBOSE", raising=False)
    folder = tiny_dir(next(iter(tiny_families)))
    capsys.readouterr()  # what saving the tiny model printed, if this test saved it
    args = [folder, folder / "demo.png", "--method", "example-norm", "--max-new-tokens", 2]
    code, _, err = run_cli(capsys, "explain", *args, "--out", tmp_path / "quiet")
    assert code == 0, err
    assert HF_BAR not in err and err.strip() == ""
    for argv in (["--verbose", "explain", *args], ["explain", *args, "--verbose"]):
        code, _, err = run_cli(capsys, *argv, "--out", tmp_path / "loud")
        assert code == 0, err
        assert HF_BAR in err
        assert "MMXAI_VERBOSE" not in os.environ  # put back after the run
    code, _, err = run_cli(capsys, "explain", *args, "--out", tmp_path / "quiet")
    assert code == 0 and HF_BAR not in err  # a verbose run leaves the next one quiet


def test_the_bundled_model_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    """``testbed`` is the bundled model wherever the command runs, with no note when no
    file of that name is here; explain and compare both take the name, and compare keys it
    as the bundled benchmark's own run does (``--model testbed`` resumes it)."""
    from mmxai.datasets.synthetic import DATA

    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(capsys, "explain", "testbed", DATA / "images" / "0000.png",
                                "--max-new-tokens", 3, "--out", "out")
    assert code == 0, err
    assert err.strip() == "" and "answer:" in stdout
    assert json.loads((tmp_path / "out" / "run.json").read_text())["model"] == "testbed"
    common = ["--limit", 1, "--method", "tam", "--metric", "obj-iou", "--bootstrap", 10,
              "--workers", 1, "--no-progress", "--out", "results"]
    code, stdout, err = run_cli(capsys, "compare", *common)
    assert code == 0, err
    assert stdout.startswith("testbed16: 1 samples, 1 evaluated now")  # the default benchmark
    code, stdout, err = run_cli(capsys, "compare", "--model", "testbed16", *common)
    assert code == 0, err
    assert stdout.startswith("testbed16: 1 samples, 0 evaluated now, 1 already stored"), stdout


def test_a_testbed_folder_here_wins_only_if_it_holds_a_model(tiny_families, tiny_dir,
                                                             tmp_path, monkeypatch, capsys):
    """``./testbed`` holding a model is loaded instead of the bundled one; one that holds
    none (a checkout's package folder) is not; a note says which either way."""
    import shutil

    from mmxai import hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "testbed").mkdir()
    source = hub.resolve("testbed")
    assert source.spec == str(hub.BUNDLED_WEIGHTS / "testbed")
    assert "the bundled model" in source.note and "./testbed here holds no model" in source.note
    folder = tiny_dir(next(iter(tiny_families)))
    capsys.readouterr()  # what saving the tiny model printed, if this test saved it
    code, _, err = run_cli(capsys, "explain", "testbed", folder / "demo.png", "--method",
                           "example-norm", "--max-new-tokens", 2, "--out", "out")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("note: model 'testbed': the bundled model")
    shutil.rmtree(tmp_path / "testbed")
    shutil.copytree(folder, tmp_path / "testbed")
    source = hub.resolve("testbed")
    assert source.spec == "testbed" and "the folder ./testbed here" in source.note
    code, _, err = run_cli(capsys, "explain", "testbed", folder / "demo.png", "--method",
                           "example-norm", "--max-new-tokens", 2, "--out", "out")
    assert code == 0, err
    assert "note: model 'testbed': the folder ./testbed here" in err
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["model_class"] == json.loads((folder / "config.json").read_text())[
        "architectures"][0]


def test_every_bundled_weights_folder_is_a_model_name(tmp_path, monkeypatch):
    """``testbed16`` is a name as soon as ``testbed/weights/testbed16`` holds a model; a
    folder without a config.json there is no name."""
    from mmxai import hub

    for name in ("testbed", "testbed16"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text('{"architectures": ["X"]}')
    (tmp_path / "half-trained").mkdir()
    monkeypatch.setattr(hub, "BUNDLED_WEIGHTS", tmp_path)
    monkeypatch.chdir(tmp_path / "half-trained")
    assert hub.bundled_models() == {"testbed": tmp_path / "testbed",
                                    "testbed16": tmp_path / "testbed16"}
    assert hub.resolve("testbed16") == hub.Source(str(tmp_path / "testbed16"))
