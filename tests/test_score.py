"""``mmxai score`` and the saved-maps format: maps from elsewhere get compare's numbers.

The round trips run the bundled testbed model on the first synthetic scenes: the evaluator's
own per-entry values and leaderboard cells must come back exactly from the maps it saw,
saved with :func:`mmxai.saved_maps.save_maps` and scored by ``mmxai score``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_evaluator import one_torch_thread  # noqa: F401

from mmxai import cli, protocols, saved_maps
from mmxai.api import make_method
from mmxai.commands.common import open_model
from mmxai.commands.score import index_maps
from mmxai.dataset import Sample
from mmxai.datasets.synthetic import DATA, INDEX, TESTBED, SyntheticScenes
from mmxai.errors import InputError
from mmxai.evaluation import (
    Evaluator,
    NamedMetric,
    Reporter,
    ResultStore,
    RunSpec,
    leaderboard,
)
from mmxai.evaluation.tables import to_json
from mmxai.maps import to_image
from mmxai.metric import EvalItem
from mmxai.model import ImageGrid, load_model, stack_grids
from mmxai.plugins.metrics.localisation import quantise
from mmxai.registry import manager
from mmxai.saved_maps import (
    SavedMaps,
    load_maps,
    maps_path,
    painted_size,
    sample_id_of,
    save_maps,
)
from mmxai.words import token_pieces, words_from_tokens

N_SAMPLES = 5
BOOT = 50
METRICS = ",".join(protocols.LOCALISATION_METRICS)


def run_cli(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def score(capsys, maps: Path, out: Path, *extra: str | Path,
          protocol: str = "default") -> tuple[int, str, str]:
    return run_cli(capsys, "score", "--dataset", "synthetic", "--maps", maps, "--protocol",
                   protocol, "--out", out, "--bootstrap", BOOT, "--no-progress", *extra)


def one_line_error(code: int, err: str, *phrases: str) -> str:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def stored(path: Path) -> dict[tuple[str, str], tuple]:
    """(sample, metric) -> (status, parts, error) of every row of a store."""
    with ResultStore(path, read_only=True) as store:
        return {(r.sample_id, r.metric): (r.status, r.parts, r.error) for r in store.rows()}


def cells(board: dict) -> dict[str, tuple]:
    return {c["metric"]: (c["value"], c["ci_low"], c["ci_high"], c["n"], c["failed"])
            for c in board["cells"]}


# -- the evaluator's own maps, saved -----------------------------------------------------------
@pytest.fixture(scope="module")
def testbed():
    torch.set_num_threads(1)
    return open_model(TESTBED, torch.device("cpu"))


def evaluate(model, folder: Path, protocol: str) -> tuple[Path, Path]:
    """tam on the first scenes, through the evaluator, with each sample's maps saved as it
    measures them (the trace's tokens, the method's flat maps, the grids): (maps, store)."""
    maps, store_path = folder / "tam", folder / "results.sqlite"
    chosen = protocols.get(protocol)
    metrics = [NamedMetric.make(manager().get("metrics", name), chosen.options_for(name),
                                chosen) for name in protocols.LOCALISATION_METRICS]
    spec = RunSpec(limit=N_SAMPLES, bootstrap=BOOT, protocol=protocol)
    real = Evaluator._measure

    def measure(self, key, job, item, label):
        if not maps_path(maps, job.sample.id).exists():
            tokens, special = token_pieces(item.model.tokenizer,
                                           item.trace.generated_ids.tolist())
            save_maps(maps, job.sample.id, tokens, special, item.maps, item.trace.grids)
        return real(self, key, job, item, label)

    with pytest.MonkeyPatch.context() as patch, ResultStore(store_path) as store:
        patch.setattr(Evaluator, "_measure", measure)
        Evaluator(SyntheticScenes(), [make_method("tam")], metrics, store, spec,
                  reporter=Reporter()).run(model, "testbed")
    return maps, store_path


@pytest.fixture(scope="module")
def default_run(testbed, tmp_path_factory) -> tuple[Path, Path]:
    return evaluate(testbed, tmp_path_factory.mktemp("default-run"), "default")


def copy_maps(source: Path, target: Path, ids: dict[str, str] | None = None) -> Path:
    """The maps files of ``source``, saved again under other sample ids (old -> new)."""
    for path in sorted(source.glob("*.npz")):
        old = sample_id_of(path)
        saved = load_maps(path)
        new = (ids or {}).get(old, old)
        save_maps(target, new, saved.tokens, saved.special, saved.maps, saved.grids)
    return target


# -- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["default", "tam-reference"])
def test_score_gives_the_evaluators_values_for_its_maps(protocol, testbed, default_run,
                                                        tmp_path, capsys, request):
    if protocol == "default":
        maps, reference = default_run
    else:
        request.getfixturevalue("nltk_data")
        maps, reference = evaluate(testbed, tmp_path / "run", protocol)
    out = tmp_path / "score"
    code, printed, err = score(capsys, maps, out, "--limit", N_SAMPLES, protocol=protocol)
    assert code == 0, err
    assert f"{N_SAMPLES} samples, {N_SAMPLES} scored now" in printed
    expected, got = stored(reference), stored(out / "results.sqlite")
    assert len(expected) == N_SAMPLES * 5 and got == expected  # every entry, exactly
    assert any(parts["value"] for status, parts, _ in got.values() if "value" in parts)
    board = json.loads((out / "leaderboard.json").read_text())
    assert cells(board) == cells(to_json(leaderboard([reference], n_boot=BOOT)))
    suffix = "" if protocol == "default" else "[protocol=tam-reference]"
    assert {c["metric"] for c in board["cells"]} == {
        m + suffix for m in protocols.LOCALISATION_METRICS}
    assert {(r["model"], r["method"]) for r in board["rows"]} == {("maps", "tam")}
    record = board["provenance"][0]
    assert record["source"] == "saved maps" and record["protocol"] == protocol
    assert record["maps"]["files"] == N_SAMPLES
    for name in ("leaderboard.md", "leaderboard.tex", "leaderboard.csv", "references.bib"):
        assert (out / name).is_file()


def test_score_gives_compares_values_for_compares_saved_maps(tmp_path, capsys):
    saved, compared, scored = tmp_path / "maps", tmp_path / "compare", tmp_path / "score"
    code, _, err = run_cli(capsys, "compare", "--dataset", "synthetic", "--limit", 3,
                           "--method", "tam", "--metric", METRICS, "--save-maps", saved,
                           "--out", compared, "--bootstrap", BOOT, "--no-progress")
    assert code == 0, err
    code, _, err = score(capsys, saved / "testbed" / "tam", scored, "--limit", 3)
    assert code == 0, err
    assert stored(scored / "results.sqlite") == stored(compared / "results.sqlite")
    assert cells(json.loads((scored / "leaderboard.json").read_text())) == cells(
        json.loads((compared / "leaderboard.json").read_text()))


def test_maps_of_several_grids_round_trip_exactly(tmp_path):
    # LLaVA-NeXT-like: a thumbnail and a tile of image 0, and a grid of image 1
    grids = stack_grids([ImageGrid(0, np.arange(6), (2, 3)),
                         ImageGrid(0, np.arange(4), (2, 2), box=(0.0, 0.0, 0.5, 0.5)),
                         ImageGrid(1, np.arange(9), (3, 3), frame=0, kind="image")])
    flat = np.random.default_rng(0).random((3, 19), dtype=np.float32) * 4 - 1
    path = save_maps(tmp_path, "s", [" red", " cube", "<eos>"], [False, False, True], flat,
                     grids)
    with np.load(path) as archive:
        assert set(archive.files) == {"tokens", "maps", "special", "box", "flat", "grids"}
        painted = archive["maps"]
        assert painted.shape == (3, *painted_size(grids[:2]))
        np.testing.assert_array_equal(painted[1], to_image(flat[1], grids, 0, painted.shape[1:]))
    saved = load_maps(path)
    assert saved.tokens == [" red", " cube", "<eos>"] and saved.special == [False, False, True]
    np.testing.assert_array_equal(saved.maps, flat)
    assert [(g.image, g.frame, g.shape, g.box, g.offset, g.kind) for g in saved.grids] == [
        (g.image, g.frame, g.shape, g.box, g.offset, g.kind) for g in grids]
    mask = np.zeros((40, 60), dtype=np.int32)
    mask[5:20, 10:40] = 1
    sample = Sample("s", Path("unused.png"), "p", mask=mask, categories={"red cube": 1})
    words = words_from_tokens(saved.tokens, sample.categories, special=saved.special)

    def parts(maps, layout):
        trace = type("T", (), {"grids": layout})()
        item = EvalItem(sample, None, None, trace, maps, words, mask)
        return [manager().get("metrics", m)().measure(item)
                for m in protocols.LOCALISATION_METRICS]

    assert parts(saved.maps, saved.grids) == parts(flat, grids)
    assert parts(flat, grids)[0]["value"]  # the noun object was scored


def test_one_grid_is_saved_as_maps_with_its_box(tmp_path):
    grid = stack_grids([ImageGrid(0, np.arange(12), (3, 4), box=(0.125, 0.0, 0.875, 1.0))])
    flat = np.random.default_rng(1).random((2, 12), dtype=np.float32)
    path = save_maps(tmp_path, "one", [" a", " b"], [False, False], flat, grid)
    with np.load(path) as archive:
        assert set(archive.files) == {"tokens", "maps", "special", "box"}
        np.testing.assert_array_equal(archive["maps"], flat.reshape(2, 3, 4))
        assert archive["box"].tolist() == [0.125, 0.0, 0.875, 1.0]
    saved = load_maps(path)
    np.testing.assert_array_equal(saved.maps, flat)
    assert saved.grids[0].shape == (3, 4) and saved.grids[0].box == (0.125, 0.0, 0.875, 1.0)


def test_uint8_maps_are_used_as_the_reference_wrote_them(tmp_path):
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    np.savez(tmp_path / "u.npz", tokens=np.asarray([" cat"]), maps=values)
    saved = load_maps(tmp_path / "u.npz")
    assert saved.maps.dtype == np.float32 and saved.grids[0].shape == (16, 16)
    np.testing.assert_array_equal(quantise(saved.maps), values.reshape(1, -1))


@pytest.mark.parametrize("sample_id", ["images[3]", "scenes.jsonl:7", "a/b", "a\\b", ".hidden",
                                       "..", "50% off", "café au lait", "x?y*z|<>\""])
def test_sample_ids_make_safe_file_names_that_read_back(sample_id, tmp_path):
    path = maps_path(tmp_path, sample_id)
    assert path.parent == tmp_path and not path.name.startswith(".")
    assert all(ch.isalnum() or ch in "-_.~+=,@%" for ch in path.name), path.name
    assert sample_id_of(path) == sample_id
    grid = stack_grids([ImageGrid(0, np.arange(4), (2, 2))])
    assert save_maps(tmp_path, sample_id, [" a"], [False], np.zeros((1, 4)), grid) == path
    assert index_maps(tmp_path) == {sample_id: [path]}


# -- hostile files -----------------------------------------------------------------------------
class Boom:
    """Unpickling this would create a file: mmxai must never unpickle."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


GOOD = {"tokens": np.asarray([" a", " b"]), "maps": np.zeros((2, 3, 3), np.float32)}


def hostile(case: str, folder: Path) -> Path:
    path = folder / f"{case}.npz"
    arrays = dict(GOOD)
    if case == "text file":
        path.write_text("tokens,maps\n")
        return path
    if case == "empty file":
        path.write_bytes(b"")
        return path
    if case == "pickle":
        path.write_bytes(pickle.dumps(Boom(str(folder / "pwned"))))
        return path
    if case == "npy array":
        with open(path, "wb") as fh:
            np.save(fh, GOOD["maps"])
        return path
    if case == "folder":
        path.mkdir()
        return path
    if case == "huge when unpacked":
        np.savez_compressed(path, tokens=GOOD["tokens"], maps=np.zeros((2, 300, 300), np.float32))
        return path
    if case == "truncated":
        np.savez(path, **arrays)
        path.write_bytes(path.read_bytes()[:100])
        return path
    if case == "object tokens":
        arrays["tokens"] = np.asarray([" a", Boom(str(folder / "pwned"))], dtype=object)
    elif case == "no tokens":
        del arrays["tokens"]
    elif case == "no maps":
        del arrays["maps"]
    elif case == "flat maps":
        arrays["maps"] = np.zeros((2, 9), np.float32)
    elif case == "one map too few":
        arrays["maps"] = np.zeros((1, 3, 3), np.float32)
    elif case == "empty map":
        arrays["maps"] = np.zeros((2, 0, 3), np.float32)
    elif case == "nan":
        arrays["maps"] = np.full((2, 3, 3), np.nan, np.float32)
    elif case == "int maps":
        arrays["maps"] = np.zeros((2, 3, 3), np.int64)
    elif case == "int tokens":
        arrays["tokens"] = np.asarray([1, 2])
    elif case == "backwards box":
        arrays["box"] = np.asarray([0.8, 0.0, 0.2, 1.0])
    elif case == "special of another length":
        arrays["special"] = np.zeros(3, bool)
    elif case == "flat without grids":
        arrays["flat"] = np.zeros((2, 9), np.float32)
    elif case == "grids not tiling flat":
        arrays["flat"] = np.zeros((2, 9), np.float32)
        arrays["grids"] = np.asarray(json.dumps([{"image": 0, "frame": 0, "shape": [2, 2],
                                                  "box": [0, 0, 1, 1], "offset": 0}]))
    elif case == "unknown member":
        arrays["specials"] = np.ones(2, bool)
    np.savez(path, **arrays)
    return path


HOSTILE = {
    "text file": "not an npz archive", "empty file": "an empty file",
    "pickle": "not an npz archive", "npy array": "a single .npy array",
    "truncated": "not a readable npz archive", "object tokens": "never unpickles",
    "no tokens": "no 'tokens' array", "no maps": "no 'maps' array",
    "flat maps": "expected (n_tokens, h, w)", "one map too few": "1 maps for 2 tokens",
    "empty map": "h, w >= 1", "nan": "NaN or infinite", "int maps": "int64",
    "int tokens": "expected strings", "backwards box": "x1 > x0",
    "special of another length": "one flag per token", "flat without grids": "no 'grids'",
    "grids not tiling flat": "cover 4 cells", "unknown member": "unknown member(s) 'specials'",
    "folder": "not a regular file", "huge when unpacked": "unpack to",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_bad_maps_file_is_refused_in_one_line_naming_it(case, tmp_path, monkeypatch):
    path = hostile(case, tmp_path)
    if case == "huge when unpacked":
        monkeypatch.setattr(saved_maps, "MAX_BYTES", path.stat().st_size)
    with pytest.raises(InputError) as caught:
        load_maps(path)
    message = str(caught.value)
    assert str(path) in message and HOSTILE[case] in message and "\n" not in message
    assert not (tmp_path / "pwned").exists()


def test_score_counts_bad_samples_as_failed_and_goes_on(default_run, tmp_path, capsys):
    maps = copy_maps(default_run[0], tmp_path / "maps")
    ids = [s.id for s in SyntheticScenes(limit=N_SAMPLES)]
    maps_path(maps, ids[1]).unlink()  # missing
    shutil.copy(hostile("flat maps", tmp_path), maps_path(maps, ids[2]))  # wrong shapes
    shutil.copy(hostile("object tokens", tmp_path), maps_path(maps, ids[3]))  # needs pickle
    maps_path(maps, ids[4]).unlink()
    os.mkfifo(maps_path(maps, ids[4]))  # would block a reader forever
    shutil.copy(maps_path(maps, ids[0]), maps / "not-a-sample.npz")  # a stray
    (maps / "README.txt").write_text("not maps")
    out = tmp_path / "out"
    code, printed, err = score(capsys, maps, out, "--limit", N_SAMPLES)
    assert code == 0, err
    assert "Traceback" not in err and f"{N_SAMPLES} samples" in printed
    assert "4 failed (20 results)" in printed
    failed = [line for line in err.splitlines() if line.startswith("failed")]
    assert len(failed) == 4, err
    for sample_id, cause in zip(ids[1:], ["no maps file", "expected (n_tokens, h, w)",
                                          "never unpickles", "not a regular file"],
                                strict=True):
        assert any(f"sample {sample_id}" in line and cause in line for line in failed), err
    notes = [line for line in err.splitlines() if "name no sample" in line]
    assert len(notes) == 1 and "not-a-sample.npz" in notes[0] and "README" not in err
    board = json.loads((out / "leaderboard.json").read_text())
    assert {(r["n"], r["failed"]) for r in board["rows"]} == {(1, 4)}
    assert {f["sample"] for f in board["failures"]} == set(ids[1:])
    assert not (tmp_path / "pwned").exists()


def test_score_reads_sample_ids_that_are_not_file_names(default_run, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(DATA / "images", root / "images")
    shutil.copytree(DATA / "masks", root / "masks")
    lines = (DATA / INDEX).read_text().splitlines()[:3]
    new = ["a/b:1", "images[3]", "scenes.jsonl:7"]
    renamed = {}
    with open(root / INDEX, "w") as fh:
        for line, sample_id in zip(lines, new, strict=True):
            record = json.loads(line)
            renamed[record["id"]] = sample_id
            fh.write(json.dumps({**record, "id": sample_id}) + "\n")
    maps = copy_maps(default_run[0], tmp_path / "maps", renamed)
    out = tmp_path / "out"
    code, _, err = score(capsys, maps, out, "--data-root", root)
    assert code == 0, err
    expected = {(renamed[s], m): row for (s, m), row in stored(default_run[1]).items()
                if s in renamed}
    assert stored(out / "results.sqlite") == expected


# -- runs and reruns ---------------------------------------------------------------------------
def test_a_rerun_counts_nothing_twice_and_refuses_other_inputs(default_run, tmp_path, capsys):
    maps = copy_maps(default_run[0], tmp_path / "tam")
    out = tmp_path / "out"
    code, printed, err = score(capsys, maps, out, "--limit", 2)
    assert code == 0 and "2 scored now" in printed, err
    code, printed, err = score(capsys, maps, out, "--limit", 3)
    assert code == 0 and "1 scored now, 2 already stored" in printed, err
    code, printed, err = score(capsys, maps, out, "--limit", 3)
    assert code == 0 and "0 scored now, 3 already stored" in printed, err
    assert len(stored(out / "results.sqlite")) == 3 * 5
    # another source into the same table
    code, _, err = score(capsys, maps, out, "--limit", 3, "--label", "copy")
    assert code == 0, err
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(r["method"] for r in board["rows"]) == ["copy", "tam"]
    # the same label from other maps: refused, nothing written
    first = maps_path(maps, sample_id_of(sorted(maps.glob("*.npz"))[0]))
    saved = load_maps(first)
    save_maps(maps, sample_id_of(first), saved.tokens, saved.special, saved.maps * 0.5,
              saved.grids)
    before = stored(out / "results.sqlite")
    code, _, err = score(capsys, maps, out, "--limit", 3)
    one_line_error(code, err, "maps / synthetic / tam", "maps_fingerprint", "new --out")
    assert stored(out / "results.sqlite") == before


@pytest.mark.parametrize("case, phrases", [
    ("bogus protocol", ["--protocol 'bogus'", "unknown protocol", "tam-reference"]),
    ("no maps folder", ["--maps", "no such folder"]),
    ("maps is a file", ["--maps", "not a folder"]),
    ("a folder of method folders", ["no .npz file", "folder(s) tam", "point --maps at one"]),
    ("files of another dataset", ["names a sample of dataset 'synthetic'", "other-0.npz"]),
    ("unknown dataset", ["no-such-dataset"]),
    ("option of no dataset", ["--option 'tam.eci=false'"]),
    ("negative limit", ["--limit -1"]),
    ("out is a file", ["--out", "is a file"]),
])
def test_bad_score_arguments_are_one_line(case, phrases, default_run, tmp_path, capsys):
    maps, out, extra, protocol = default_run[0], tmp_path / "out", [], "default"
    dataset = "synthetic"
    if case == "bogus protocol":
        protocol = "bogus"
    elif case == "no maps folder":
        maps = tmp_path / "nowhere"
    elif case == "maps is a file":
        maps = next(default_run[0].glob("*.npz"))
    elif case == "a folder of method folders":
        maps = default_run[0].parent
    elif case == "files of another dataset":
        maps = copy_maps(default_run[0], tmp_path / "other",
                         {sample_id_of(p): f"other-{i}" for i, p in
                          enumerate(sorted(default_run[0].glob("*.npz")))})
    elif case == "unknown dataset":
        dataset = "no-such-dataset"
    elif case == "option of no dataset":
        extra = ["--option", "tam.eci=false"]
    elif case == "negative limit":
        extra = ["--limit", "-1"]
    elif case == "out is a file":
        out.write_text("in the way")
    code, _, err = run_cli(capsys, "score", "--dataset", dataset, "--maps", maps,
                           "--protocol", protocol, "--out", out, *extra)
    one_line_error(code, err, *phrases)
    assert not (out / "results.sqlite").exists()


# -- explain --save-maps -----------------------------------------------------------------------
def test_explain_save_maps_writes_files_score_reads(tiny_dir, tmp_path, capsys):
    folder = tiny_dir("qwen2-vl")
    out, saved = tmp_path / "out", tmp_path / "maps"
    code, printed, err = run_cli(capsys, "explain", folder, folder / "demo.png", "--method",
                                 "tam,example-norm", "--max-new-tokens", 4, "--out", out,
                                 "--save-maps", saved, "--sample-id", "images[3]")
    assert code == 0, err
    assert "images%5B3%5D.npz" in printed
    tokenizer = load_model(str(folder)).tokenizer
    for method in ("tam", "example-norm"):
        maps = load_maps(saved / method / "images%5B3%5D.npz")
        assert isinstance(maps, SavedMaps) and sample_id_of(maps.path) == "images[3]"
        with np.load(out / method / "maps.npz") as written:
            np.testing.assert_array_equal(maps.maps, written["maps"])
            pieces, special = token_pieces(tokenizer, written["generated_ids"].tolist())
            assert [g.shape for g in maps.grids] == [tuple(s) for s in written["grid_shapes"]]
        assert maps.tokens == pieces and maps.special == special and maps.n_tokens == 4
    # the default id is the image's name
    code, _, err = run_cli(capsys, "explain", folder, folder / "demo.png", "--method", "tam",
                           "--max-new-tokens", 2, "--out", out, "--save-maps", saved)
    assert code == 0, err
    assert load_maps(saved / "tam" / "demo.npz").n_tokens == 2


def test_explain_save_maps_refuses_bad_targets_before_loading(tiny_dir, tmp_path, capsys):
    folder = tiny_dir("qwen2-vl")
    image, out = folder / "demo.png", tmp_path / "out"
    code, _, err = run_cli(capsys, "explain", folder, image, "--out", out, "--sample-id", "x")
    one_line_error(code, err, "--sample-id 'x'", "--save-maps")
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "tam").write_text("in the way")
    code, _, err = run_cli(capsys, "explain", folder, image, "--out", out, "--save-maps",
                           blocked)
    one_line_error(code, err, "--save-maps", "tam is a file there")
    code, _, err = run_cli(capsys, "explain", folder, image, "--out", out, "--save-maps",
                           tmp_path / "maps", "--sample-id", "")
    one_line_error(code, err, "--sample-id", "non-empty")
    assert not (out / "index.html").exists()


def test_a_video_maps_file_fails_its_sample_in_one_line(tmp_path, capsys):
    """A clip's maps (a time axis) against a still image's mask: refused, counted, the run
    goes on; the other sample scores."""
    first, second = [s.id for s in list(SyntheticScenes())[:2]]
    grids = stack_grids([ImageGrid(0, np.arange(4 * k, 4 * k + 4), (2, 2), frame=k,
                                   kind="video") for k in range(2)])
    save_maps(tmp_path / "maps", first, [" a"], [False], np.ones((1, 8), np.float32), grids,
              np.array([[0, 1], [2, 3]]))
    save_maps(tmp_path / "maps", second, [" a"], [False], np.ones((1, 4), np.float32),
              stack_grids([ImageGrid(0, np.arange(4), (2, 2))]))
    code, _, err = score(capsys, tmp_path / "maps", tmp_path / "out", "--limit", "2")
    rows = stored(tmp_path / "out" / "results.sqlite")
    failed = {sample for (sample, _), (status, _, _) in rows.items() if status != "ok"}
    assert failed == {first}, err
    errors = {error for (sample, _), (_, _, error) in rows.items() if sample == first}
    assert len(errors) == 1 and "holds a video's maps" in errors.pop()
