"""``mmxai compare --protocol`` and ``--save-maps``: the protocol reaches the words, the
metric columns and the Python API, the default protocol keeps every stored key, a
contradicting option is one line, and computed maps are written one file per sample and
method, from one process or several."""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from helpers_evaluator import one_torch_thread  # noqa: F401

from mmxai import cli, protocols
from mmxai.api import make_method
from mmxai.commands import compare
from mmxai.errors import InputError, MMXAIError
from mmxai.evaluation import Evaluator, NamedMetric, Reporter, RunSpec, provenance
from mmxai.registry import manager
from mmxai.saved_maps import load_maps, maps_path
from mmxai.words import WordOptions

# the bundled benchmark (no --model, no --dataset): testbed16 on the synthetic16 scenes
BUNDLED = ["--limit", "2", "--workers", "1", "--bootstrap", "50", "--no-progress"]


def run_cli(capsys, *argv: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(compare, "open_model", refuse)


def key(spec: RunSpec, method: str = "random") -> str:
    dataset = manager().get("datasets", "coco-caption")(Path("."))
    return provenance.options_hash(
        provenance.run_settings(make_method(method), dataset, spec, "float32"))


def stored_samples(out: Path) -> list[str]:
    found: set[str] = set()
    for store in out.glob("results*.sqlite"):
        found |= {r[0] for r in sqlite3.connect(store).execute(
            "SELECT DISTINCT sample_id FROM results")}
    return sorted(found)


# -- --protocol ------------------------------------------------------------------------------
def test_an_unknown_protocol_is_one_line_before_the_model_loads(capsys, no_model_load):
    code, _, err = run_cli(capsys, "compare", "--protocol", "bogus", *BUNDLED)
    line = one_error_line(code, err)
    assert "--protocol 'bogus': unknown protocol" in line
    assert "default, tam-reference" in line


@pytest.mark.parametrize(("protocol", "option", "sets"), [
    ("tam-reference", "obj-iou.protocol=default", "protocol=tam-reference"),
    ("default", "f1-iou.protocol=tam-reference", "protocol=default"),
])
def test_a_metric_option_that_contradicts_the_protocol_is_one_line(
        capsys, nltk_data, no_model_load, protocol, option, sets):
    code, _, err = run_cli(capsys, "compare", "--protocol", protocol, "--method", "tam",
                           "--metric", "obj-iou,f1-iou", "--option", option, *BUNDLED)
    line = one_error_line(code, err)
    assert f"--option {option}: contradicts --protocol {protocol}, which sets {sets}" in line


def test_an_option_that_agrees_with_the_protocol_is_one_column(nltk_data):
    chosen = ["--method", "tam", "--metric", "obj-iou", "--protocol", "tam-reference"]
    agreed = compare.make_plan(parse(*chosen, "--option", "obj-iou.protocol=tam-reference"))
    assert [m.label for m in agreed.metrics] == ["obj-iou[protocol=tam-reference]"]
    implied = compare.make_plan(parse(*chosen)).metrics
    assert [(m.label, m.options) for m in agreed.metrics] == [
        (m.label, m.options) for m in implied]


def test_the_default_protocol_keeps_the_keys_and_labels_stores_already_hold():
    # the value test_run_spec pins: computed before --protocol existed
    assert key(RunSpec()) == key(RunSpec(protocol="default")) == "365375573c0d"
    spec = compare.run_spec(parse("--method", "tam", "--metric",
                                  "obj-iou,f1-iou,seconds-per-token"))
    assert (spec.protocol, spec.words) == ("default", None)
    plan = compare.build_plan(spec)
    assert [m.label for m in plan.metrics] == ["obj-iou", "f1-iou", "seconds-per-token"]
    assert all(m.options == {} for m in plan.metrics)
    # where the maps go changes no result
    assert key(RunSpec(save_maps=Path("maps"))) == key(RunSpec())


def test_tam_reference_sets_the_words_the_key_and_the_localisation_columns(nltk_data):
    spec = compare.run_spec(parse("--protocol", "tam-reference", "--method", "tam",
                                  "--metric", "obj-iou,f1-iou,seconds-per-token"))
    tam = protocols.get("tam-reference")
    assert (spec.protocol, spec.words) == ("tam-reference", tam.words)
    assert spec.words.tagger == "nltk" and spec.words.reference_compatible
    assert key(spec) != key(RunSpec())  # its rows are another run, beside the default's
    plan = compare.build_plan(spec)
    assert [m.label for m in plan.metrics] == [
        "obj-iou[protocol=tam-reference]", "f1-iou[protocol=tam-reference]",
        "seconds-per-token"]
    assert plan.metrics[0].metric.options.protocol == "tam-reference"


def test_the_spec_round_trips_its_protocol_and_old_specs_load():
    spec = RunSpec(protocol="tam-reference", save_maps=Path("runs/maps"))
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    old = RunSpec().to_dict()
    del old["protocol"], old["save_maps"]  # a record stored before either existed
    assert RunSpec.from_dict(old) == RunSpec()
    with pytest.raises(InputError, match="--protocol tam-reference fixes the word options"):
        RunSpec(protocol="tam-reference", words=WordOptions())
    with pytest.raises(InputError, match="unknown protocol"):
        RunSpec(protocol="tam")


def test_the_python_api_applies_and_checks_the_protocol(nltk_data):
    plan = compare.build_plan(compare.run_spec(parse("--method", "random", "--limit", "1")))
    obj_iou = manager().get("metrics", "obj-iou")
    spec = RunSpec(protocol="tam-reference", limit=1)
    made = NamedMetric.make(obj_iou, {}, "tam-reference")
    assert made.label == "obj-iou[protocol=tam-reference]"
    Evaluator(plan.dataset, plan.methods, [made], None, spec, reporter=Reporter())
    with pytest.raises(MMXAIError, match="protocol 'tam-reference' sets protocol=tam-ref"):
        Evaluator(plan.dataset, plan.methods, [NamedMetric.make(obj_iou)], None, spec,
                  reporter=Reporter())
    with pytest.raises(MMXAIError, match="protocol 'default' sets protocol=default"):
        Evaluator(plan.dataset, plan.methods, [made], None, RunSpec(), reporter=Reporter())


def test_compare_tam_reference_on_the_bundled_benchmark_labels_its_columns(
        tmp_path, capsys, nltk_data):
    out = tmp_path / "out"
    code, printed, err = run_cli(capsys, "compare", "--method", "tam", "--metric",
                                 "obj-iou,f1-iou", "--protocol", "tam-reference", "--out", out,
                                 *BUNDLED)
    assert code == 0, err
    assert "2 samples, 2 evaluated now, 0 already stored, 0 failed" in printed
    board = json.loads((out / "leaderboard.json").read_text())
    assert {m["label"] for m in board["metrics"]} == {
        "obj-iou[protocol=tam-reference]", "f1-iou[protocol=tam-reference]"}
    assert all(r["n"] == 2 and r["failed"] == 0 for r in board["rows"])
    record = board["provenance"][0]
    assert record["run"]["protocol"] == "tam-reference"
    assert record["words"]["tagger"] == "nltk"


# -- --save-maps -----------------------------------------------------------------------------
@pytest.mark.parametrize("workers", ["1", "2"])
def test_save_maps_writes_one_file_per_sample_and_method(tmp_path, capsys, workers):
    out, maps = tmp_path / "out", tmp_path / "maps"
    run = ["compare", "--method", "tam,random", "--metric", "obj-iou", "--save-maps", maps,
           "--out", out, *BUNDLED, "--workers", workers]
    code, _, err = run_cli(capsys, *run)
    assert code == 0, err
    samples = stored_samples(out)
    assert len(samples) == 2
    expected = {maps_path(maps / "testbed16" / method, sid)
                for method in ("tam", "random") for sid in samples}
    assert set(maps.rglob("*.npz")) == expected
    assert not list(maps.rglob(".saving-*"))  # no temporary file left behind
    tam = load_maps(maps_path(maps / "testbed16" / "tam", samples[0]))
    assert tam.maps.ndim == 2 and tam.maps.shape[0] == len(tam.tokens) > 0
    assert tam.maps.shape[1] == sum(g.size for g in tam.grids)
    assert np.isfinite(tam.maps).all() and not np.array_equal(
        tam.maps, load_maps(maps_path(maps / "testbed16" / "random", samples[0])).maps)
    # resumed samples are not computed again: nothing written, and the run says so
    for path in expected:
        path.unlink()
    code, _, err = run_cli(capsys, *run)
    assert code == 0, err
    assert not list(maps.rglob("*.npz"))
    notes = re.findall(r"--save-maps: testbed16(?: \(shard \d/2\))?: (\d) \(sample, method\) "
                       r"pair\(s\) were already stored", err)
    assert len(notes) == int(workers) and sum(map(int, notes)) == 4, err


def test_maps_that_cannot_be_written_fail_their_rows_not_the_run(tmp_path, capsys):
    out, maps = tmp_path / "out", tmp_path / "maps"
    (maps / "testbed16").mkdir(parents=True)
    (maps / "testbed16" / "tam").write_text("a file where tam's folder goes")
    code, printed, err = run_cli(capsys, "compare", "--method", "tam,random", "--metric",
                                 "obj-iou", "--save-maps", maps, "--out", out, *BUNDLED)
    assert code == 0, err
    assert "2 failed (2 results)" in printed
    failed = [line for line in err.splitlines() if line.startswith("failed sample")]
    assert len(failed) == 2, err
    assert all("--save-maps: method 'tam':" in line and "(tam · obj-iou)" in line
               for line in failed), failed
    assert len(list((maps / "testbed16" / "random").glob("*.npz"))) == 2
    board = json.loads((out / "leaderboard.json").read_text())
    assert {(r["method"], r["n"], r["failed"]) for r in board["rows"]} == {
        ("tam", 0, 2), ("random", 2, 0)}


def test_a_save_maps_path_that_is_a_file_is_one_line(tmp_path, capsys, no_model_load):
    target = tmp_path / "maps"
    target.write_text("not a folder")
    code, _, err = run_cli(capsys, "compare", "--method", "random", "--metric", "obj-iou",
                           "--save-maps", target, "--out", tmp_path / "out", *BUNDLED)
    assert "--save-maps" in one_error_line(code, err) and "is a file" in err


def test_model_labels_become_one_folder_name():
    spec = RunSpec(save_maps=Path("m"))
    assert spec.maps_folder("Qwen/Qwen2-VL-2B-Instruct", "tam") == Path(
        "m/Qwen--Qwen2-VL-2B-Instruct/tam")
    assert spec.maps_folder("testbed", "logit-lens") == Path("m/testbed/logit-lens")
    assert spec.maps_folder("tiny:llava", "tam") == Path("m/tiny_llava/tam")
    assert spec.maps_folder("/models/my model", "tam") == Path("m/models--my_model/tam")
    assert spec.maps_folder("..", "tam") == Path("m/_/tam")
    with pytest.raises(MMXAIError, match="saves no maps"):
        RunSpec().maps_folder("testbed", "tam")
