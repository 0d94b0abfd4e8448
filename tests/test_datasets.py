"""Dataset readers on fixtures written in TAM's exact formats (tests/fixtures/tam_fixture.py)."""

import json
from importlib import metadata

import numpy as np
import pytest
from fixtures.tam_fixture import (
    COCO_SCENES,
    HEIGHT,
    WIDTH,
    draw_scene,
    write_coco_fixture,
    write_folder_fixture,
    write_grandf_fixture,
    write_openpsg_fixture,
)
from PIL import Image

from mmxai.dataset import Sample, load_image, load_mask
from mmxai.datasets.folder import ImageFolder
from mmxai.datasets.tam_formats import (
    COCO_PROMPT,
    GRANDF_PROMPT,
    OPENPSG_PROMPT,
    CocoCaption,
    GranDf,
    OpenPSG,
)
from mmxai.errors import InputError
from mmxai.registry import PluginManager
from mmxai.words import COCO_CATEGORIES


def check_against(dataset, info):
    """Ids, references, categories and mask labels are what the fixture wrote."""
    samples = list(dataset)
    assert [s.id for s in samples] == info["ids"] and len(dataset) == len(info["ids"])
    for sample in samples:
        assert sample.references == info["references"][sample.id]
        assert sample.categories == info["categories"][sample.id]
        image = load_image(sample)
        assert image.size == (WIDTH, HEIGHT) and image.mode == "RGB"
        mask = load_mask(sample, image.size)
        assert mask.shape == (HEIGHT, WIDTH)
        assert set(np.unique(mask)) - {0} == info["labels"][sample.id]
    return samples


def test_registered_through_their_entry_points():
    eps = [ep for ep in metadata.entry_points(group="mmxai")
           if ep.name in ("tam_formats", "image_folder")]
    names = PluginManager(entry_points=eps).names("datasets")
    assert names == ["coco-caption", "folder", "grandf", "openpsg"]


def test_coco_caption(tmp_path):
    info = write_coco_fixture(tmp_path / "coco2014")
    samples = check_against(CocoCaption(info["root"]), info)
    first = samples[0]
    assert first.prompt == COCO_PROMPT
    assert first.image == info["root"] / "image" / "000000000042.jpg"
    assert first.mask == info["root"] / "seg_label" / "000000000042.png"
    assert first.categories["ball"] == 37 and first.categories["glass"] == 46
    assert len(COCO_CATEGORIES) == 80
    objects, _ = COCO_SCENES[42]
    _, expected = draw_scene(objects)
    assert (load_mask(first, (WIDTH, HEIGHT)) == expected).all()
    assert CocoCaption(info["root"], limit=2, prompt="Describe.").__len__() == 2
    assert next(iter(CocoCaption(info["root"], prompt="Describe."))).prompt == "Describe."


def test_coco_missing_label_map_is_all_zero_and_recorded(tmp_path):
    info = write_coco_fixture(tmp_path / "coco", missing_masks=(73,))
    sample = {s.id: s for s in CocoCaption(info["root"])}["73"]
    assert sample.meta["mask_missing"]
    mask = load_mask(sample, (WIDTH, HEIGHT))
    assert mask.shape == (HEIGHT, WIDTH) and not mask.any()


def test_missing_image_is_yielded_and_fails_on_loading(tmp_path):
    info = write_coco_fixture(tmp_path / "coco", missing_images=(139,))
    samples = list(CocoCaption(info["root"]))
    assert [s.id for s in samples] == info["ids"]
    with pytest.raises(InputError, match=r"sample 139: image file .*000000000139.jpg does not"):
        load_image(samples[2])


@pytest.mark.parametrize("writer, cls, prompt", [
    (write_grandf_fixture, GranDf, GRANDF_PROMPT),
    (write_openpsg_fixture, OpenPSG, OPENPSG_PROMPT),
])
def test_anno_json_datasets(tmp_path, writer, cls, prompt):
    info = writer(tmp_path / cls.__name__)
    samples = check_against(cls(info["root"]), info)
    assert all(s.prompt == prompt for s in samples)
    assert samples[0].image == info["root"] / json.loads(
        (info["root"] / "anno.json").read_text())[0][0]
    assert cls.citation.startswith("@") and "Token Activation Map" in cls.citation


def test_anno_json_missing_mask_names_the_sample(tmp_path):
    info = write_grandf_fixture(tmp_path / "GranDf", missing_masks=("street",))
    samples = list(GranDf(info["root"]))
    assert len(samples) == 2
    with pytest.raises(InputError, match=r"^sample 1: mask file .*street.png does not exist"):
        load_mask(samples[1], (WIDTH, HEIGHT))


def test_broken_records_do_not_stop_iteration(tmp_path):
    info = write_openpsg_fixture(tmp_path / "OpenPSG")
    anno = info["root"] / "anno.json"
    records = json.loads(anno.read_text())
    anno.write_text(json.dumps([records[0], ["only", "two"], records[1]]))
    samples = list(OpenPSG(info["root"]))
    assert [s.id for s in samples] == ["0", "1", "2"]
    with pytest.raises(InputError, match=r"sample 1: record 1 .* is not \[image, caption"):
        load_image(samples[1])
    assert load_mask(samples[2], (WIDTH, HEIGHT)).any()


def test_missing_annotation_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="COCO instances.*does not exist"):
        len(CocoCaption(tmp_path))
    with pytest.raises(InputError, match="grandf annotations.*anno.json does not exist"):
        list(GranDf(tmp_path))


def test_fingerprint_is_stable_and_changes_on_edit(tmp_path):
    info = write_coco_fixture(tmp_path / "coco")
    root = info["root"]
    before = CocoCaption(root).fingerprint()
    assert CocoCaption(root).fingerprint() == before and len(before) == 64
    captions = root / "annotations" / "captions_val2014.json"
    data = json.loads(captions.read_text())
    data["annotations"][0]["caption"] = "An edited caption."
    captions.write_text(json.dumps(data))
    edited = CocoCaption(root).fingerprint()
    assert edited != before
    # replacing a mask by one of another size changes it too
    Image.fromarray(np.zeros((HEIGHT, WIDTH + 1), np.uint8)).save(
        root / "seg_label" / "000000000073.png")
    assert CocoCaption(root).fingerprint() != edited


def test_anno_fingerprint_changes_when_an_image_goes(tmp_path):
    info = write_grandf_fixture(tmp_path / "GranDf")
    before = GranDf(info["root"]).fingerprint()
    (info["root"] / "images" / "beach.jpg").unlink()
    assert GranDf(info["root"]).fingerprint() != before


# -- load_mask ------------------------------------------------------------------------------------
def sample_with(tmp_path, mask, **meta):
    return Sample(id="42", image=tmp_path / "x.jpg", prompt="", mask=mask, meta=meta)


def test_wrong_size_mask_names_the_sample_and_sizes(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(path)
    with pytest.raises(InputError, match=r"^sample 42: mask is 10×10 but the image is 64×48$"):
        load_mask(sample_with(tmp_path, path), (64, 48))
    with pytest.raises(InputError, match="mask is 10×10 but the image is 64×48"):
        load_mask(sample_with(tmp_path, np.zeros((10, 10), np.int32)), (64, 48))


def test_missing_and_corrupt_masks(tmp_path):
    with pytest.raises(InputError, match=r"^sample 42: mask file .*nothing.png does not exist"):
        load_mask(sample_with(tmp_path, tmp_path / "nothing.png"), (64, 48))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match=r"^sample 42: cannot read mask .*corrupt.png"):
        load_mask(sample_with(tmp_path, corrupt), (64, 48))
    colour = tmp_path / "colour.png"
    Image.fromarray(np.dstack([np.zeros((48, 64), np.uint8), np.ones((48, 64), np.uint8),
                               np.zeros((48, 64), np.uint8)])).save(colour)
    with pytest.raises(InputError, match="colour image"):
        load_mask(sample_with(tmp_path, colour), (64, 48))
    assert load_mask(sample_with(tmp_path, None), (64, 48)) is None


def test_palette_and_16_bit_label_maps(tmp_path):
    labels = np.zeros((48, 64), np.uint8)
    labels[5:9, 3:7] = 7
    palette = Image.fromarray(labels).convert("P")
    palette.save(tmp_path / "p.png")
    assert (load_mask(sample_with(tmp_path, tmp_path / "p.png"), (64, 48)) == labels).all()
    wide = labels.astype(np.uint16) * 100  # label 700 needs 16 bits
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert (load_mask(sample_with(tmp_path, tmp_path / "w.png"), (64, 48)) == wide).all()


# -- folder ---------------------------------------------------------------------------------------
def test_folder_with_png_masks(tmp_path):
    info = write_folder_fixture(tmp_path / "mine")
    dataset = ImageFolder(info["root"], prompt="What is here?")
    samples = check_against(dataset, info)
    assert all(s.prompt == "What is here?" for s in samples)


def test_folder_without_ground_truth(tmp_path):
    info = write_folder_fixture(tmp_path / "mine")
    for png in (info["root"] / "masks").iterdir():
        png.unlink()
    (info["root"] / "masks").rmdir()
    samples = list(ImageFolder(info["root"]))
    assert [s.id for s in samples] == info["ids"]
    assert all(s.mask is None and s.categories == {} and s.prompt == COCO_PROMPT
               for s in samples)


def test_folder_with_coco_json_matches_the_label_maps(tmp_path):
    info = write_coco_fixture(tmp_path / "coco")
    root = info["root"]
    folder = ImageFolder(root / "image", coco=root / "annotations" / "instances_minival2014.json")
    samples = list(folder)
    assert [s.id for s in samples] == [f"{int(i):012d}" for i in sorted(info["ids"], key=int)]
    assert samples[0].categories == COCO_CATEGORIES
    for sample in samples:
        expected = np.asarray(Image.open(root / "seg_label" / f"{sample.id}.png"))
        assert (load_mask(sample, (WIDTH, HEIGHT)) == expected).all()


def test_folder_fingerprint_sees_new_images(tmp_path):
    info = write_folder_fixture(tmp_path / "mine")
    before = ImageFolder(info["root"]).fingerprint()
    assert ImageFolder(info["root"]).fingerprint() == before
    Image.new("RGB", (WIDTH, HEIGHT)).save(info["root"] / "zzz.png")
    assert ImageFolder(info["root"]).fingerprint() != before
