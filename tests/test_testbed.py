"""The bundled testbed model: it loads through the LLaVA adapter, is a word-level tiny LLaVA
with tied embeddings, and still captions held-out scenes as well as its card says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmxai.datasets.scenes import PROMPT
from mmxai.datasets.synthetic import SyntheticScenes
from mmxai.datasets.train_testbed import (
    GRID,
    SIZE,
    build_processor,
    captions,
    eval_scenes,
    readout,
)
from mmxai.model import load_model
from mmxai.trace import generate_trace

TESTBED = Path(SyntheticScenes.default_model)
RECORD = json.loads((TESTBED / "training.json").read_text())
SCENES = eval_scenes(30)
MARGIN = 0.05


@pytest.fixture(scope="module")
def testbed():
    torch.set_num_threads(1)
    return load_model(str(TESTBED))


@pytest.fixture(scope="module")
def predicted(testbed) -> list[str]:
    return captions(testbed.hf, testbed.processor, SCENES)


def test_folder_is_complete_and_small():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "processor_config.json", "chat_template.jinja", "README.md", "training.json"):
        assert (TESTBED / name).is_file(), name
    size = (TESTBED / "model.safetensors").stat().st_size
    assert size < 10_000_000 and size == RECORD["weights_bytes"]
    card = (TESTBED / "README.md").read_text()
    assert f"{RECORD['exact_match']:.1%}" in card and f"{RECORD['readout']['auroc']:.3f}" in card


def test_loads_as_a_tied_tiny_llava(testbed):
    hf = testbed.hf
    assert type(hf).__name__ == "LlavaForConditionalGeneration"
    assert type(testbed).__name__ == "Llava"
    assert hf.config.tie_word_embeddings
    assert hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
    assert sum(p.numel() for p in hf.parameters()) == RECORD["parameters"]
    assert testbed.fixed_size == (SIZE, SIZE)


def test_inputs_have_one_grid_of_image_tokens(testbed):
    inputs = testbed.build_inputs([SCENES[0].pil()], PROMPT)
    assert len(inputs.grids) == 1 and inputs.grids[0].shape == (GRID, GRID)
    prompt = testbed.tokenizer.convert_ids_to_tokens(inputs.input_ids[inputs.prompt_positions])
    assert prompt == ["describe", "the", "image", "."]


def test_tokenizer_is_word_level_and_matches_a_fresh_build(testbed):
    tokenizer = testbed.tokenizer
    assert tokenizer.get_vocab() == build_processor().tokenizer.get_vocab()
    for scene in SCENES:
        ids = tokenizer(scene.caption, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(scene.caption.split())
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == scene.caption


def test_captions_held_out_scenes_as_the_card_says(predicted):
    accuracy = sum(p == s.caption for p, s in zip(predicted, SCENES, strict=True)) / len(SCENES)
    assert accuracy >= RECORD["exact_match"] - MARGIN


def test_traced_generation_gives_the_same_captions(testbed, predicted):
    for scene, expected in list(zip(SCENES, predicted, strict=True))[:3]:
        trace = generate_trace(testbed, testbed.build_inputs([scene.pil()], PROMPT),
                               max_new_tokens=16)
        text = testbed.tokenizer.decode(trace.generated_ids, skip_special_tokens=True)
        assert " ".join(text.split()) == expected


def test_lm_head_reads_object_words_at_object_patches(testbed):
    measured = readout(testbed.hf, testbed.processor, SCENES)
    assert measured["auroc"] >= RECORD["readout"]["auroc"] - MARGIN
    assert measured["pointing"] > 2 * measured["pointing_chance"]


def test_default_compare_runs_every_method_and_metric_on_the_bundled_benchmark(tmp_path, capsys):
    """``mmxai compare`` with no model and no dataset, on the first scenes of the split."""
    from mmxai import cli
    from mmxai.registry import manager

    out = tmp_path / "results"
    code = cli.main(["compare", "--limit", "2", "--workers", "1", "--bootstrap", "50",
                     "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "2 samples, 2 evaluated now, 0 already stored, 0 failed" in printed
    board = json.loads((out / "leaderboard.json").read_text())
    assert {r["method"] for r in board["rows"]} == set(manager().items("methods"))
    assert all(r["n"] == 2 and r["failed"] == 0 for r in board["rows"])
    names = {m["label"].split("[")[0] for m in board["metrics"]}
    assert names == set(manager().items("metrics"))
    assert board["provenance"][0]["dataset"] == "synthetic"
    assert [r["model"] for r in board["rows"]][0] == "testbed"  # not this machine's path
    for name in ("leaderboard.md", "leaderboard.tex", "leaderboard.csv", "references.bib"):
        assert (out / name).stat().st_size > 0


def test_training_script_writes_a_loadable_reproducible_model(tmp_path):
    """A smoke run of the recipe (every stage, a few steps): same seed, same weights."""
    from mmxai.datasets import train_testbed

    torch.set_num_threads(1)
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        train_testbed.main(["--out", str(out), "--seed", "7", "--scale", "0.002",
                            "--eval-size", "3"])
        runs.append(out)
    record = json.loads((runs[0] / "training.json").read_text())
    assert record["seed"] == 7 and record["eval_size"] == 3 and record["device"] == "cpu"
    assert set(record["final_losses"]) == {"0 vision", "1 text", "2 align", "3 joint"}
    assert 0.0 <= record["exact_match"] <= 1.0 and 0.0 <= record["readout"]["auroc"] <= 1.0
    first, second = ((run / "model.safetensors").read_bytes() for run in runs)
    assert first == second
    card = (runs[0] / "README.md").read_text()
    assert "seed 7" in card and "one CPU thread" in card
    assert load_model(str(runs[0])).hf.config.tie_word_embeddings
