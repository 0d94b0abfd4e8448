"""The bundled testbed models (8x8 and 16x16 token grids): each loads through the LLaVA
adapter, is a word-level tiny LLaVA with tied embeddings, and still captions held-out scenes
as well as its card says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmxai.datasets.synthetic import SyntheticScenes, SyntheticScenes16
from mmxai.model import load_model
from mmxai.testbed.scenes import PROMPT, resolve_geometry
from mmxai.testbed.train import (
    build_processor,
    captions,
    eval_scenes,
    readout,
)
from mmxai.trace import generate_trace

MARGIN = 0.05
BENCHMARKS = {"8": SyntheticScenes, "16": SyntheticScenes16}


class Bundled:
    """One bundled model: its folder, training record, geometry and 30 held-out scenes."""

    def __init__(self, geometry: str) -> None:
        self.folder = Path(BENCHMARKS[geometry].default_model)
        self.record = json.loads((self.folder / "training.json").read_text())
        self.geometry = resolve_geometry(geometry)
        self.scenes = eval_scenes(30, self.geometry)


@pytest.fixture(scope="module", params=sorted(BENCHMARKS), ids=lambda g: f"{g}x{g}")
def bundled(request) -> Bundled:
    return Bundled(request.param)


@pytest.fixture(scope="module")
def testbed(bundled):
    torch.set_num_threads(1)
    return load_model(str(bundled.folder))


@pytest.fixture(scope="module")
def predicted(testbed, bundled) -> list[str]:
    return captions(testbed.hf, testbed.processor, bundled.scenes)


def test_folder_is_complete_and_small(bundled):
    TESTBED, RECORD = bundled.folder, bundled.record
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "processor_config.json", "chat_template.jinja", "README.md", "training.json"):
        assert (TESTBED / name).is_file(), name
    size = (TESTBED / "model.safetensors").stat().st_size
    assert size < 10_000_000 and size == RECORD["weights_bytes"]
    card = (TESTBED / "README.md").read_text()
    assert f"{RECORD['exact_match']:.1%}" in card and f"{RECORD['readout']['auroc']:.3f}" in card


def test_loads_as_a_tied_tiny_llava(testbed, bundled):
    hf = testbed.hf
    assert type(hf).__name__ == "LlavaForConditionalGeneration"
    assert type(testbed).__name__ == "Llava"
    assert hf.config.tie_word_embeddings
    assert hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
    assert sum(p.numel() for p in hf.parameters()) == bundled.record["parameters"]
    size = bundled.geometry.size
    assert testbed.fixed_size == (size, size)


def test_inputs_have_one_grid_of_image_tokens(testbed, bundled):
    inputs = testbed.build_inputs([bundled.scenes[0].pil()], PROMPT)
    grid = bundled.geometry.grid
    assert len(inputs.grids) == 1 and inputs.grids[0].shape == (grid, grid)
    prompt = testbed.tokenizer.convert_ids_to_tokens(inputs.input_ids[inputs.prompt_positions])
    assert prompt == ["describe", "the", "image", "."]


def test_tokenizer_is_word_level_and_matches_a_fresh_build(testbed, bundled):
    tokenizer = testbed.tokenizer
    assert tokenizer.get_vocab() == build_processor(bundled.geometry).tokenizer.get_vocab()
    for scene in bundled.scenes:
        ids = tokenizer(scene.caption, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(scene.caption.split())
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == scene.caption


def test_captions_held_out_scenes_as_the_card_says(predicted, bundled):
    scenes = bundled.scenes
    accuracy = sum(p == s.caption for p, s in zip(predicted, scenes, strict=True)) / len(scenes)
    assert accuracy >= bundled.record["exact_match"] - MARGIN


def test_traced_generation_gives_the_same_captions(testbed, predicted, bundled):
    for scene, expected in list(zip(bundled.scenes, predicted, strict=True))[:3]:
        trace = generate_trace(testbed, testbed.build_inputs([scene.pil()], PROMPT),
                               max_new_tokens=16)
        text = testbed.tokenizer.decode(trace.generated_ids, skip_special_tokens=True)
        assert " ".join(text.split()) == expected


def test_lm_head_reads_object_words_at_object_patches(testbed, bundled):
    measured = readout(testbed.hf, testbed.processor, bundled.scenes)
    assert measured["auroc"] >= bundled.record["readout"]["auroc"] - MARGIN
    assert measured["pointing"] > 2 * measured["pointing_chance"]


def test_default_compare_runs_every_method_and_metric_on_the_bundled_benchmark(tmp_path, capsys):
    """``mmxai compare`` with no model and no dataset, on the first scenes of the split: every
    method but the costly ones (``default_run`` False), every metric."""
    from mmxai import cli
    from mmxai.method import default_methods
    from mmxai.registry import manager

    out = tmp_path / "results"
    code = cli.main(["compare", "--limit", "2", "--workers", "1", "--bootstrap", "50",
                     "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "2 samples, 2 evaluated now, 0 already stored, 0 failed" in printed
    board = json.loads((out / "leaderboard.json").read_text())
    assert {r["method"] for r in board["rows"]} == set(default_methods())
    assert {"integrated-gradients", "eagle"} <= set(manager().items("methods")) - set(
        default_methods())
    assert all(r["n"] == 2 and r["failed"] == 0 for r in board["rows"])
    names = {m["label"].split("[")[0] for m in board["metrics"]}
    assert names == set(manager().items("metrics"))
    assert board["provenance"][0]["dataset"] == "synthetic16"  # the 16x16 benchmark
    assert [r["model"] for r in board["rows"]][0] == "testbed16"  # not this machine's path
    for name in ("leaderboard.md", "leaderboard.tex", "leaderboard.csv", "references.bib"):
        assert (out / name).stat().st_size > 0


def test_training_script_writes_a_loadable_reproducible_model(tmp_path, monkeypatch):
    """A smoke run of the recipe (every stage, a few steps), uninterrupted, and the same run
    stopped twice (by a step limit, then by a simulated kill between checkpoints) and
    continued by rerunning the command: bit-identical weights."""
    from mmxai.testbed import train as train_testbed

    torch.set_num_threads(1)
    args = ["--seed", "7", "--scale", "0.001", "--eval-size", "3"]  # 2+1+1+1+3 steps
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train_testbed.main(["--out", str(whole), *args])

    train_testbed.main(["--out", str(resumed), *args, "--stop-after", "1"])  # mid stage 0
    assert not (resumed / "model.safetensors").exists()
    checkpoint = resumed / "checkpoint" / train_testbed.CHECKPOINT
    state = torch.load(checkpoint, weights_only=False)
    assert (state["stage_name"], state["step"], state["stream_position"]) == ("0 vision", 1, 64)
    assert state["optimizer"]["state"]  # AdamW's moments travel with the weights

    real_schedule = train_testbed.schedule

    def killed_in_joint_training(step, steps, lr, warmup=50):
        if (step, steps) == (1, 3):  # the 2nd of 3 joint steps; last checkpoint: stage start
            raise KeyboardInterrupt
        return real_schedule(step, steps, lr, warmup)

    monkeypatch.setattr(train_testbed, "schedule", killed_in_joint_training)
    with pytest.raises(KeyboardInterrupt):
        train_testbed.main(["--out", str(resumed), *args])
    state = torch.load(checkpoint, weights_only=False)
    assert (state["stage_name"], state["step"]) == ("3 joint", 0)
    monkeypatch.setattr(train_testbed, "schedule", real_schedule)
    with pytest.raises(SystemExit, match="another run"):  # not someone else's checkpoint
        train_testbed.main(["--out", str(resumed), "--seed", "8", "--scale", "0.001"])
    train_testbed.main(["--out", str(resumed), *args])

    record = json.loads((resumed / "training.json").read_text())
    assert record["seed"] == 7 and record["eval_size"] == 3 and record["device"] == "cpu"
    assert record["versions"]["torch"] == torch.__version__
    assert [s["from"] for s in record["sessions"]] == [
        "0 vision step 0", "0 vision step 1", "3 joint step 0"]
    assert set(record["final_losses"]) == {"0 vision", "1 text", "2 align", "3 joint"}
    assert 0.0 <= record["exact_match"] <= 1.0 and 0.0 <= record["readout"]["auroc"] <= 1.0
    first, second = ((run / "model.safetensors").read_bytes() for run in (whole, resumed))
    assert first == second
    assert record["final_losses"] == json.loads((whole / "training.json").read_text())[
        "final_losses"]
    card = (resumed / "README.md").read_text()
    assert "seed 7" in card and "one CPU thread" in card and "3 sessions" in card
    assert load_model(str(resumed)).hf.config.tie_word_embeddings

    # A new run may start from what a stage of another left (e.g. to train stage 3 longer).
    forked = tmp_path / "forked"
    train_testbed.main(["--out", str(forked), *args, "--start-from",
                        str(whole / "checkpoint" / "end-2-align.pt")])
    assert (forked / "model.safetensors").read_bytes() == first
    assert json.loads((forked / "training.json").read_text())["started_from"]["stage"] == (
        "2 check step 0")


def test_training_script_builds_the_16x16_geometry():
    """``--geometry 16``: 128-px scenes, 8-px patches, 256 image tokens in a 16x16 grid."""
    from mmxai.testbed import train as train_testbed
    from mmxai.testbed.scenes import GEOMETRY_16

    processor = train_testbed.build_processor("16")
    batcher = train_testbed.Batcher(processor)
    assert batcher.geometry is GEOMETRY_16 and GEOMETRY_16.grid == 16
    model = train_testbed.build_model(processor.tokenizer, 0, "16")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    scenes = train_testbed.eval_scenes(2, "16")
    batch = batcher.captioning(scenes)
    assert int((batch["input_ids"][0] == image_id).sum()) == 256
    assert batch["pixel_values"].shape == (2, 3, 128, 128)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)
    coverage = train_testbed.patch_coverage(scenes[0].mask == 1, GEOMETRY_16.patch)
    assert coverage.shape == (256,) and 9 <= int((coverage > 0).sum()) <= 64
