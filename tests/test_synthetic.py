"""The synthetic benchmark: a deterministic generator whose captions follow from the image,
the shipped held-out split, and the Dataset that serves it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmxai.dataset import Sample
from mmxai.datasets.synthetic import (
    DATA,
    DATA16,
    EVAL_SIZE_16,
    SyntheticScenes,
    SyntheticScenes16,
    write_split,
)
from mmxai.registry import manager
from mmxai.testbed.scenes import (
    COLOURS,
    DISTRACTOR_COLOURS,
    EVAL_SEED,
    EVAL_SIZE,
    FUNCTION_WORDS,
    GAP,
    SHAPES,
    SIZE,
    Scene,
    generate_scene,
)
from mmxai.words import words_from_tokens

STREAM = [generate_scene(11, i) for i in range(150)]


def parse(caption: str) -> list[tuple[str, str]]:
    """The (colour, shape) objects of a caption, or an AssertionError if off-grammar."""
    words = caption.split()
    assert words[-1] == "."
    objects, i = [], 0
    while True:
        assert words[i] == "a" and words[i + 1] in COLOURS and words[i + 2] in SHAPES
        objects.append((words[i + 1], words[i + 2]))
        i += 3
        if words[i] == ".":
            assert i == len(words) - 1
            return objects
        assert words[i:i + 2] == ["left", "of"]
        i += 2


def test_same_seed_gives_identical_scenes():
    for index in (0, 5, 17):
        a, b = generate_scene(11, index), generate_scene(11, index)
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.mask, b.mask)
        assert a.caption == b.caption and a.objects == b.objects
    assert not np.array_equal(generate_scene(11, 0).image, generate_scene(12, 0).image)
    assert not np.array_equal(generate_scene(11, 0).image, generate_scene(11, 1).image)


def test_scenes_cover_the_grammar():
    counts = {len(s.named) for s in STREAM}
    assert counts == {1, 2, 3}
    assert any(s.distractor is not None for s in STREAM)
    assert any(s.distractor is None for s in STREAM)
    assert {o.colour for s in STREAM for o in s.named} == set(COLOURS)
    assert {o.shape for s in STREAM for o in s.named} == set(SHAPES)
    for scene in STREAM:
        assert scene.image.shape == (SIZE, SIZE, 3) and scene.image.dtype == np.uint8
        assert scene.mask.shape == (SIZE, SIZE)


@pytest.mark.parametrize("scene", STREAM[:60], ids=lambda s: f"scene{s.index}")
def test_caption_follows_from_the_image(scene: Scene):
    named = scene.named
    assert parse(scene.caption) == [(o.colour, o.shape) for o in named]
    assert [o.label for o in named] == list(range(1, len(named) + 1))
    # every object is painted: its mask is non-empty and is exactly its label's region
    assert set(np.unique(scene.mask)) == {0} | {o.label for o in scene.objects}
    for obj in scene.objects:
        region = scene.mask == obj.label
        ys, xs = np.nonzero(region)
        assert region.sum() > 40
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == obj.box
        # the colour the caption names is the colour the pixels show
        palette = COLOURS if obj.named else DISTRACTOR_COLOURS
        mean = scene.image[region].astype(float).mean(axis=0)
        nearest = min({**COLOURS, **DISTRACTOR_COLOURS}.items(),
                      key=lambda kv: np.abs(np.subtract(kv[1], mean)).sum())[0]
        assert nearest == obj.colour and obj.colour in palette
    # "left of" holds on mask centroids and on whole extents, with room between
    for left, right in zip(named, named[1:], strict=False):
        assert left.centroid[0] < right.centroid[0]
        assert left.box[2] + GAP < right.box[0]
    # no two objects touch; no repeated colour or shape among the named ones
    for i, a in enumerate(scene.objects):
        for b in scene.objects[i + 1:]:
            apart_x = a.box[2] + GAP < b.box[0] or b.box[2] + GAP < a.box[0]
            apart_y = a.box[3] + GAP < b.box[1] or b.box[3] + GAP < a.box[1]
            assert apart_x or apart_y
    assert len({o.colour for o in named}) == len(named)
    assert len({o.shape for o in named}) == len(named)
    # the distractor is never named and is not a colour the caption could use
    if scene.distractor is not None:
        assert scene.distractor.colour not in scene.caption.split()
        assert scene.distractor.label == len(named) + 1


def test_background_shows_no_named_colour():
    for scene in STREAM[:30]:
        pixels = scene.image[scene.mask == 0].astype(float)
        saturation = pixels.max(axis=1) - pixels.min(axis=1)
        assert np.percentile(saturation, 99) < 80  # named colours have a spread of 150+


def test_each_content_word_maps_to_the_object_it_names():
    for scene in STREAM:
        labels = scene.word_labels()
        words = scene.caption.split()
        content = [w for w in words if w not in FUNCTION_WORDS]
        assert sorted(content) == sorted(labels)  # each content word once, all mapped
        assert not set(labels) & set(FUNCTION_WORDS)
        for obj in scene.named:
            assert labels[obj.colour] == obj.label and labels[obj.shape] == obj.label
            assert np.any(scene.mask == labels[obj.colour])


def test_word_labels_reach_the_words_of_a_caption():
    scene = next(s for s in STREAM if len(s.named) == 3)
    pieces = [" " + w for w in scene.caption.split()]
    words = words_from_tokens(pieces, scene.categories(),
                                           word_labels=scene.word_labels())
    got = {w.text.strip(): w.label for w in words}
    assert got == {w: scene.word_labels().get(w) for w in scene.caption.split()}


@pytest.mark.parametrize("geometry, data, size, prefix", [
    ("8", DATA, EVAL_SIZE, "synthetic"), ("16", DATA16, EVAL_SIZE_16, "synthetic16")])
def test_shipped_split_matches_regeneration(geometry, data, size, prefix):
    records = [json.loads(line) for line in (data / "scenes.jsonl").read_text().splitlines()]
    assert len(records) == size
    for record in records:
        scene = generate_scene(EVAL_SEED, record["index"], geometry)
        assert record["seed"] == EVAL_SEED
        assert record["id"] == f"{prefix}-{EVAL_SEED}-{record['index']:04d}"
        assert np.array_equal(np.asarray(Image.open(data / record["image"])), scene.image)
        assert np.array_equal(np.asarray(Image.open(data / record["mask"])), scene.mask)
        assert record["caption"] == scene.caption
        assert record["word_labels"] == scene.word_labels()
        assert record["categories"] == scene.categories()
    if geometry == "16":  # 128-px scenes read by the 16x16 benchmark's dataset
        (sample,) = list(SyntheticScenes16(limit=1))
        assert sample.id == records[0]["id"] and Image.open(sample.image).size == (128, 128)


def test_dataset_yields_samples_with_image_sized_masks():
    dataset = SyntheticScenes(limit=25)
    samples = list(dataset)
    assert len(samples) == len(dataset) == 25
    assert len(SyntheticScenes()) == EVAL_SIZE
    for sample in samples:
        assert isinstance(sample, Sample)
        image = Image.open(sample.image)
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"
        assert isinstance(sample.mask, np.ndarray) and sample.mask.shape == (SIZE, SIZE)
        assert sample.prompt == "Describe the image."
        assert sample.references[0].endswith(" .")
        assert sample.word_labels
        for word, label in sample.word_labels.items():
            assert word in sample.references[0].split()
            assert np.any(sample.mask == label)
        assert set(sample.categories.values()) == set(np.unique(sample.mask)) - {0}


def test_the_16x16_benchmark_is_the_default_and_the_8x8_one_stays_by_name():
    from mmxai.commands.compare import default_benchmark

    assert default_benchmark() is manager().get("datasets", "synthetic16") is SyntheticScenes16
    eight = manager().get("datasets", "synthetic")
    assert eight is SyntheticScenes and eight.default_benchmark is False
    # each benchmark's bundled model, shipped with the package
    assert Path(eight.default_model).parts[-3:] == ("testbed", "weights", "testbed")
    assert Path(SyntheticScenes16.default_model).parts[-3:] == ("testbed", "weights",
                                                                 "testbed16")
    assert (Path(SyntheticScenes16.default_model) / "model.safetensors").is_file()


def test_write_split_round_trips_and_fingerprints(tmp_path: Path):
    root = write_split(tmp_path / "split", seed=5, n=4)
    dataset = SyntheticScenes(root)
    samples = list(dataset)
    assert [s.references[0] for s in samples] == [generate_scene(5, i).caption for i in range(4)]
    assert np.array_equal(samples[2].mask, generate_scene(5, 2).mask)
    before = dataset.fingerprint()
    assert before == SyntheticScenes(root).fingerprint()
    image = np.asarray(Image.open(root / "images" / "0001.png")).copy()
    image[0, 0] ^= 1
    Image.fromarray(image).save(root / "images" / "0001.png")
    assert SyntheticScenes(root).fingerprint() != before
