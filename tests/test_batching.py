"""Batched generation: ``generate_traces`` equals ``generate_trace`` per sample, and the
evaluator stores the same rows with ``batch_size`` 2 as with 1 (tiny models, CPU)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest
import torch
from fixtures.tam_fixture import write_coco_fixture
from helpers_evaluator import FAMILY, one_torch_thread, picture, run_spec  # noqa: F401
from rich.console import Console

from mmxai import cli
from mmxai.api import make_method
from mmxai.evaluation import ConsoleReporter
from mmxai.evaluation import jobs as jobs_module
from mmxai.evaluation.evaluator import Evaluator, NamedMetric
from mmxai.evaluation.spec import default_batch
from mmxai.evaluation.store import ResultStore
from mmxai.model import Model
from mmxai.registry import manager
from mmxai.trace import Needs, Trace, generate_trace, generate_traces

NEEDS = Needs(layers=(0,), attentions=True, topk=3)
#: Different prompt lengths and image sizes: Qwen gets 4, 24 and 4 image tokens, LLaVA-NeXT
#: 3, 5 and 4 crops, InternVL 1, 3 and 4 tiles.
SAMPLES = [((64, 48), "describe"),
           ((224, 150), "describe the image in many more words please"),
           ((120, 40), "what is it")]


def inputs_of(model: Model, samples=SAMPLES):
    return [model.build_inputs([picture(w, h, seed=i)], prompt)
            for i, ((w, h), prompt) in enumerate(samples)]


def assert_same_trace(single: Trace, batched: Trace) -> None:
    """The same answer, grids and recorded tensors, up to float noise."""
    assert torch.equal(single.sequence, batched.sequence)
    assert batched.prompt_len == single.prompt_len
    assert [g.positions.tolist() for g in batched.grids] == [
        g.positions.tolist() for g in single.grids]
    assert batched.hidden.shape == single.hidden.shape
    torch.testing.assert_close(batched.hidden, single.hidden, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched.layers[0], single.layers[0], atol=1e-4, rtol=1e-4)
    assert batched.layers.keys() == single.layers.keys()
    for a, b in zip(single.attentions, batched.attentions, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    generating = [single.generating_position(j) for j in range(single.n_generated)]
    classes = single.generated_ids.tolist()
    torch.testing.assert_close(batched.logits(classes, generating),
                               single.logits(classes, generating), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched.image_logits(classes), single.image_logits(classes),
                               atol=1e-4, rtol=1e-4)
    assert torch.equal(batched.topk_ids, single.topk_ids)
    torch.testing.assert_close(batched.logsumexp, single.logsumexp, atol=1e-4, rtol=1e-4)


def test_batched_traces_equal_one_at_a_time(tiny_model, tiny_family):
    """Every family: left padding, padded pixels, tiles or canvases, as its collate does."""
    model = tiny_model(tiny_family)
    assert model.supports_batching
    inputs = inputs_of(model)
    assert len({x.input_ids.shape[0] for x in inputs}) == 3  # left padding is exercised
    settings = dict(max_new_tokens=4, min_new_tokens=4)
    singles = [generate_trace(model, x, NEEDS, **settings) for x in inputs]
    batched = generate_traces(model, inputs, NEEDS, **settings)
    for single, trace in zip(singles, batched, strict=True):
        assert_same_trace(single, trace)
        assert trace.n_generated == 4


def early_stop(model: Model, inputs) -> tuple[list, dict, int]:
    """Two of ``inputs`` and generation settings under which the first ends with an EOS after
    a few tokens while the second runs to the end; and how many tokens the first generates.

    The EOS is a token the first writes early and the second never writes; the model's own EOS
    is suppressed, which keeps the greedy paths of ``min_new_tokens``.
    """
    paths = [generate_trace(model, x, max_new_tokens=6, min_new_tokens=6).generated_ids.tolist()
             for x in inputs]
    a, b, j = next((a, b, j) for j in range(1, 5) for a in range(len(paths))
                   for b in range(len(paths))
                   if paths[a][j] not in paths[b] + paths[a][:j])
    config = model.hf.generation_config
    own = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    suppress = sorted(set(config.suppress_tokens or []) | set(own))
    settings = dict(max_new_tokens=6, eos_token_id=paths[a][j], suppress_tokens=suppress)
    return [inputs[a], inputs[b]], settings, j + 1


@pytest.mark.parametrize("family", ["qwen2-vl", "llava"])
def test_a_sample_that_ends_early_is_cut_at_its_eos(tiny_model, family):
    model = tiny_model(family)
    inputs, settings, stop = early_stop(model, inputs_of(model))
    singles = [generate_trace(model, x, NEEDS, **settings) for x in inputs]
    assert [t.n_generated for t in singles] == [stop, 6]
    batched = generate_traces(model, inputs, NEEDS, **settings)
    assert batched[0].generated_ids[-1] == settings["eos_token_id"]  # the EOS is kept
    for single, trace in zip(singles, batched, strict=True):
        assert_same_trace(single, trace)
    # the other order: the long sample first, so the padded batch is shaped differently
    for single, trace in zip(singles[::-1], generate_traces(model, inputs[::-1], NEEDS,
                                                            **settings), strict=True):
        assert_same_trace(single, trace)


def test_collate_left_pads_tokens_and_stacks_images(tiny_model):
    model = tiny_model("qwen2-vl")
    a, b = inputs_of(model)[:2]
    batch = model.collate([a.features, b.features])
    width = b.input_ids.shape[0]
    pad = width - a.input_ids.shape[0]
    assert batch["input_ids"].shape == (2, width) and pad > 0
    assert (batch["input_ids"][0, :pad] == model.pad_token_id()).all()
    assert torch.equal(batch["input_ids"][0, pad:], a.input_ids)
    assert batch["attention_mask"][0].tolist() == [0] * pad + [1] * (width - pad)
    assert batch["mm_token_type_ids"][0, :pad].eq(0).all()
    assert torch.equal(batch["pixel_values"], torch.cat([a.features["pixel_values"],
                                                         b.features["pixel_values"]]))
    assert batch["image_grid_thw"].tolist() == (a.features["image_grid_thw"].tolist()
                                                + b.features["image_grid_thw"].tolist())


# -- the evaluator ---------------------------------------------------------------------------
PROMPTS = ["Describe the image.", "What do you see in this small picture, in a few words?",
           "Name the objects."]


def coco(root: Path, corrupt: int | None = None):
    """The COCO fixture (3 samples) with prompts of different lengths; optionally one image
    overwritten with bytes that are no JPEG."""
    data = write_coco_fixture(root)
    base = manager().get("datasets", "coco-caption")

    class Varied(base):
        def __iter__(self):
            for i, sample in enumerate(super().__iter__()):
                yield dataclasses.replace(sample, prompt=PROMPTS[i % len(PROMPTS)])

    dataset = Varied(data["root"])
    if corrupt is not None:
        sample = list(dataset)[corrupt]
        Path(sample.image).write_bytes(b"\xff\xd8 not a jpeg")
    return dataset


def metric(name: str, **options) -> NamedMetric:
    return NamedMetric.make(manager().get("metrics", name), options or None)


def run(dataset, model, path: Path, batch_size: int, monkeypatch=None,
        console: Console | None = None) -> list[int]:
    """Evaluate into ``path``; returns the sizes of the batched generate calls."""
    sizes = []
    if monkeypatch is not None:
        real = jobs_module.generate_traces
        monkeypatch.setattr(jobs_module, "generate_traces",
                            lambda m, inputs, *a, **k: sizes.append(len(inputs)) or real(
                                m, inputs, *a, **k))
    metrics = [metric("obj-iou"), metric("f1-iou"), metric("deletion", steps=2, max_tokens=1),
               metric("randomisation")]
    with ResultStore(path) as store:
        Evaluator(dataset, [make_method("tam"), make_method("logit-lens")], metrics, store,
                  run_spec(3, 3, batch_size=batch_size),
                  reporter=ConsoleReporter(console or Console(quiet=True), bars=False)
                  ).run(model, f"tiny:{FAMILY}")
    return sizes


def rows(path: Path) -> dict[tuple, tuple]:
    db = sqlite3.connect(path)
    found = db.execute("SELECT model, dataset, method, options_hash, sample_id, metric, status, "
                       "parts, error FROM results").fetchall()
    return {r[:6]: (r[6], json.loads(r[7]) if r[7] else None, r[8]) for r in found}


def assert_same_rows(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key, (status, parts, error) in first.items():
        other_status, other_parts, other_error = second[key]
        assert (status, error) == (other_status, other_error), key
        if parts is not None:
            assert parts.keys() == other_parts.keys(), key
            for name, values in parts.items():
                assert values == pytest.approx(other_parts[name], abs=1e-5), (key, name)


def test_the_evaluator_stores_the_same_rows_in_batches(tmp_path, tiny_model, monkeypatch):
    dataset = coco(tmp_path / "coco2014")
    model = tiny_model(FAMILY)
    assert run(dataset, model, tmp_path / "one.sqlite", 1, monkeypatch) == []
    assert run(dataset, model, tmp_path / "two.sqlite", 2, monkeypatch) == [2]  # then 1 alone
    one, two = rows(tmp_path / "one.sqlite"), rows(tmp_path / "two.sqlite")
    assert len(one) == 3 * 2 * 4 and {r[0] for r in one.values()} == {"ok"}
    assert_same_rows(one, two)


def test_a_corrupt_image_fails_alone_and_the_rest_of_its_batch_generates(tmp_path, tiny_model,
                                                                          monkeypatch):
    dataset = coco(tmp_path / "coco2014", corrupt=1)
    model = tiny_model(FAMILY)
    assert run(dataset, model, tmp_path / "batch.sqlite", 3, monkeypatch) == [2]
    found = rows(tmp_path / "batch.sqlite")
    bad = list(dataset)[1].id
    assert len(found) == 3 * 2 * 4
    for (_, _, _, _, sid, _), (status, _, error) in found.items():
        if sid == bad:
            assert status == "failed" and error.startswith(f"sample {bad}: cannot read image")
        else:
            assert status == "ok"
    run(dataset, model, tmp_path / "single.sqlite", 1)
    assert_same_rows(rows(tmp_path / "single.sqlite"), found)


def test_a_failed_batch_falls_back_to_one_sample_at_a_time(tmp_path, tiny_model, monkeypatch):
    dataset = coco(tmp_path / "coco2014")
    model = tiny_model(FAMILY)
    bad = list(dataset)[2]

    def no_batch(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    def picky(model, inputs, *args, **kwargs):
        if inputs.prompt == bad.prompt:
            raise ValueError("this one cannot generate")
        return generate_trace(model, inputs, *args, **kwargs)

    monkeypatch.setattr(jobs_module, "generate_traces", no_batch)
    monkeypatch.setattr(jobs_module, "generate_trace", picky)
    console = Console(record=True, width=300)
    run(dataset, model, tmp_path / "fallback.sqlite", 3, console=console)
    assert ("batch of 3 samples failed to generate together (RuntimeError: CUDA out of memory)"
            in console.export_text())
    found = rows(tmp_path / "fallback.sqlite")
    assert len(found) == 3 * 2 * 4
    for (_, _, _, _, sid, _), (status, _, error) in found.items():
        if sid == bad.id:
            assert status == "failed"
            assert error == f"sample {sid}: generation: ValueError: this one cannot generate"
        else:
            assert status == "ok"


def test_an_adapter_without_batching_generates_one_at_a_time(tmp_path, tiny_model,
                                                              monkeypatch):
    model = tiny_model(FAMILY)
    monkeypatch.setattr(type(model), "supports_batching", False)
    assert run(coco(tmp_path / "coco2014"), model, tmp_path / "r.sqlite", 4, monkeypatch) == []


def test_compare_batch_option(capsys):
    assert default_batch(torch.device("cpu")) == 1
    assert default_batch(torch.device("cuda", 0)) == 8
    assert cli.main(["compare", "--model", f"tiny:{FAMILY}", "--dataset", "coco-caption",
                     "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err
