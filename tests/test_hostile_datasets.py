"""Hostile datasets (issue 9, "right or refused"): every reader, fed broken files.

A broken record, entry or ground truth is a sample that fails with one line naming it and
the cause, while the other samples run; a file that cannot be read as a whole, or an unknown
or ill-typed option, is one red line before the run (exit 2), never a traceback. Runs go
through ``mmxai compare`` on the tiny LLaVA with the ``centre`` baseline, one metric that
needs a mask (``obj-iou``) and one that does not (``seconds-per-token``).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from fixtures.tam_fixture import (
    write_coco_fixture,
    write_folder_fixture,
    write_grandf_fixture,
    write_openpsg_fixture,
)
from helpers_evaluator import FAMILY, one_torch_thread  # noqa: F401
from PIL import Image, features

from mmxai import cli
from mmxai.dataset import Dataset, Sample, load_image, load_mask
from mmxai.datasets.folder import ImageFolder
from mmxai.datasets.synthetic import SyntheticScenes, write_split
from mmxai.datasets.tam_formats import CocoCaption, GranDf, OpenPSG
from mmxai.errors import InputError, MMXAIError
from mmxai.images import read_image

RUN = ["--model", f"tiny:{FAMILY}", "--method", "centre", "--metric",
       "obj-iou,seconds-per-token", "--max-new-tokens", "2", "--min-new-tokens", "2",
       "--device", "cpu", "--workers", "1", "--threads", "1", "--bootstrap", "10",
       "--no-progress"]
MASKED, UNMASKED = "obj-iou", "seconds-per-token"


def compare(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main(["compare", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run(capsys, tmp_path: Path, *argv: str | Path) -> tuple[dict, str]:
    """A compare run that must complete: ``{(sample, metric): (status, error)}`` and what
    it printed."""
    out = tmp_path / "out"
    code, printed, err = compare(capsys, *RUN, *argv, "--out", out)
    assert code == 0, err
    assert "Traceback" not in printed + err
    db = sqlite3.connect(out / "results.sqlite")
    rows = db.execute("SELECT sample_id, metric, status, error FROM results").fetchall()
    db.close()
    return {(s, m): (status, error) for s, m, status, error in rows}, printed + err


def refused(capsys, *argv: str | Path) -> str:
    """A compare run refused before it starts: exit 2, one line, no traceback; the line."""
    code, printed, err = compare(capsys, *RUN, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in printed + err
    return " ".join(lines[0].split())


def failed(rows: dict, sample: str, metric: str = UNMASKED) -> str:
    status, error = rows[(sample, metric)]
    assert status == "failed", (sample, metric, status, error)
    return error


def ran(rows: dict, sample: str, metric: str = UNMASKED) -> None:
    status, error = rows[(sample, metric)]
    assert status != "failed", (sample, metric, error)


# -- options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset, spec, message", [
    ("synthetic", "synthetic.bogus=1",
     "dataset 'synthetic' has no option(s) bogus; options: limit"),
    ("synthetic", "synthetic.prompt=Describe.",
     "dataset 'synthetic' has no option(s) prompt; options: limit"),
    ("folder", "folder.mask=masks",
     "dataset 'folder' has no option(s) mask; options: categories, coco, limit, masks, prompt"),
    ("folder", "folder.limit=0", "dataset 'folder': limit=0: expected a whole number >= 1"),
    ("folder", "folder.limit=many", "option folder.limit='many': expected a whole number"),
    ("folder", "folder.prompt= ", "dataset 'folder': prompt is empty"),
    ("coco-caption", "coco-caption.colour=red", "dataset 'coco-caption' has no option(s) "
                                                "colour; options: limit, prompt"),
])
def test_unknown_or_ill_typed_dataset_options_are_refused(tmp_path, capsys, dataset, spec,
                                                          message):
    info = write_folder_fixture(tmp_path / "mine")
    line = refused(capsys, "--dataset", dataset, "--data-root", info["root"], "--option", spec,
                   "--out", tmp_path / "out")
    assert message in line


def test_folder_options_are_typed_and_checked(tmp_path):
    info = write_folder_fixture(tmp_path / "mine")
    root = info["root"]
    folder = ImageFolder(root, masks=str(root / "masks"), limit="2",
                         categories='{"dog": "18", "person": 1}')
    assert folder.masks == root / "masks" and folder.limit == 2 and len(folder) == 2
    assert next(iter(folder)).categories == {"dog": 18, "person": 1}
    with pytest.raises(MMXAIError, match=r"masks=.*nowhere is not a folder"):
        ImageFolder(root, masks=root / "nowhere")
    with pytest.raises(MMXAIError, match="either `masks` or `coco`"):
        ImageFolder(root, masks=root / "masks", coco=root / "x.json")
    with pytest.raises(MMXAIError, match="categories come from the COCO file"):
        ImageFolder(root, coco=root / "x.json", categories={"dog": 18})
    with pytest.raises(MMXAIError, match="option folder.categories"):
        ImageFolder(root, categories={"dog": True})


def test_a_dataset_without_options_refuses_any():
    class Pictures(Dataset):
        name = "pictures"

        def __iter__(self):
            yield Sample("0", Image.new("RGB", (8, 8)), "Describe.")

    assert [s.id for s in Pictures()] == ["0"]
    with pytest.raises(MMXAIError, match="dataset 'pictures' has no option.s. size; "
                                         "options: none"):
        Pictures(size=3)
    assert SyntheticScenes(limit="3").limit == 3 and len(SyntheticScenes(limit=3)) == 3


# -- coco-caption ----------------------------------------------------------------------------
def test_coco_broken_records_fail_their_own_samples(tmp_path, capsys):
    info = write_coco_fixture(tmp_path / "coco")
    notes = info["root"] / "annotations"
    instances = json.loads((notes / "instances_minival2014.json").read_text())
    images = instances["images"]
    instances["images"] = [images[0], {"file_name": "lost.jpg"}, {"id": "abc"}, images[1],
                           images[2], dict(images[0])]
    (notes / "instances_minival2014.json").write_text(json.dumps(instances))
    captions = json.loads((notes / "captions_val2014.json").read_text())
    captions["annotations"][2]["caption"] = 5  # image 73's only reference
    raw = json.dumps(captions).encode()
    # Latin-1 bytes in a caption of 139, and in the caption of 999, an image not in the run
    raw = raw.replace(b"Black cat", b"Black ca\xeft").replace(b"Not in", b"N\xf6t in")
    (notes / "captions_val2014.json").write_bytes(raw)

    rows, printed = run(capsys, tmp_path, "--dataset", "coco-caption",
                        "--data-root", info["root"])
    assert {s for s, _ in rows} == {"42", "images[1]", "images[2]", "73", "139", "images[5]"}
    for metric in (MASKED, UNMASKED):
        ran(rows, "42", metric)
        assert failed(rows, "images[1]", metric) == (
            "sample images[1]: instances_minival2014.json images[1] has no 'id'")
        assert failed(rows, "images[2]", metric) == (
            'sample images[2]: instances_minival2014.json images[2] has id "abc", expected a '
            "whole number >= 0")
        assert failed(rows, "images[5]", metric) == (
            "sample images[5]: instances_minival2014.json images[5] repeats image id 42 of "
            "images[0]")
        assert failed(rows, "73", metric) == (
            "sample 73: captions_val2014.json annotations[2] (a reference of image 73): "
            "caption is an integer 5, expected a string")
        assert failed(rows, "139", metric) == (
            "sample 139: captions_val2014.json annotations[4] (a reference of image 139): "
            r"caption is not UTF-8 text: 'Black ca\xeft, purple sofa.'")
    assert "6 samples, 6 evaluated now, 0 already stored, 5 failed" in printed
    assert "failed sample 73: captions_val2014.json annotations[2]" in printed


def test_coco_ids_stay_unique_and_stable(tmp_path):
    """A broken record is named by its place in the file, which no integer id can take."""
    info = write_coco_fixture(tmp_path / "coco")
    path = info["root"] / "annotations" / "instances_minival2014.json"
    _edit(path, images=[{"id": 42}, {"id": "42"}, {"id": 42.0}, {"id": True}, {"id": 73}])
    ids = [s.id for s in CocoCaption(info["root"])]
    assert ids == ["42", "images[1]", "images[2]", "images[3]", "73"]
    assert [s.id for s in CocoCaption(info["root"])] == ids
    assert len(CocoCaption(info["root"]).fingerprint()) == 64


@pytest.mark.parametrize("damage, message", [
    (lambda notes: _edit(notes / "instances_minival2014.json", images={"42": {}}),
     "COCO instances (image ids): {notes}/instances_minival2014.json must be a JSON object "
     "whose 'images' is a list of {{'id': integer, ...}}; its 'images' is an object"),
    (lambda notes: _edit(notes / "captions_val2014.json", annotations=[{"caption": "A dog."}]),
     "COCO captions: captions_val2014.json annotations[0] has no 'image_id'; cannot tell "
     "which image it describes"),
    (lambda notes: _edit(notes / "captions_val2014.json",
                         annotations=[{"image_id": "42", "caption": "A dog."}]),
     "COCO captions: captions_val2014.json annotations[0] has image_id \"42\", not an "
     "integer; cannot tell which image it describes"),
    (lambda notes: (notes / "captions_val2014.json").write_bytes(
        (notes / "captions_val2014.json").read_text().encode("utf-16")),
     "COCO captions: {notes}/captions_val2014.json is not valid JSON at byte 0 (line 1, "
     "column 1): Expecting value; it is not UTF-8 text either (byte 0 is 0xff)"),
    (lambda notes: (notes / "instances_minival2014.json").write_bytes(b'{"images": [\xe9]}'),
     "COCO instances (image ids): {notes}/instances_minival2014.json is not valid JSON at "
     "byte 12 (line 1, column 13): Expecting value; it is not UTF-8 text either (byte 12 "
     "is 0xe9)"),
])
def test_coco_unusable_files_are_refused_in_one_line(tmp_path, capsys, damage, message):
    info = write_coco_fixture(tmp_path / "coco")
    notes = info["root"] / "annotations"
    damage(notes)
    line = refused(capsys, "--dataset", "coco-caption", "--data-root", info["root"],
                   "--out", tmp_path / "out")
    assert line == "error: " + message.format(notes=notes)


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# -- folder ----------------------------------------------------------------------------------
READABLE = {".jfif": "JPEG", ".tif": "TIFF", ".webp": "WEBP", ".ppm": "PPM", ".tga": "TGA",
            ".bmp": "BMP"}
if features.check("jpg_2000"):
    READABLE[".jp2"] = "JPEG2000"
if features.check("avif"):
    READABLE[".avif"] = "AVIF"


def test_folder_entries_that_cannot_be_read_are_failed_samples(tmp_path, capsys):
    info = write_folder_fixture(tmp_path / "mine")
    root = info["root"]
    picture = Image.open(root / "42.png").convert("RGB")
    for suffix, fmt in READABLE.items():  # formats Pillow reads: samples like any other
        picture.save(root / f"pic{suffix.replace('.', '-')}{suffix}", fmt)
    os.symlink(root / "gone.png", root / "dangling.png")
    os.symlink("loop.png", root / "loop.png")
    os.mkfifo(root / "pipe.png")
    (root / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (root / "broken.jfif").write_bytes(b"not a JPEG at all")
    picture.save(root / "73.jpg")  # 73.png is there too: one stem, two images
    (root / "README.md").write_text("my pictures")  # not images: not samples
    (root / "notes.json").write_text("{}")
    (root / "masks" / "139.png").unlink()  # the masks folder lacks one image's mask

    rows, printed = run(capsys, tmp_path, "--dataset", "folder", "--data-root", root)
    pictures = {f"pic{s.replace('.', '-')}" for s in READABLE}
    assert {s for s, _ in rows} == {"42", "139", "73.jpg", "73.png", "dangling", "loop",
                                    "pipe", "phone", "broken", *pictures}
    ran(rows, "42", MASKED)
    for sample in pictures:  # read; no mask of their own
        ran(rows, sample, UNMASKED)
        assert failed(rows, sample, MASKED) == (
            f"sample {sample}: mask file {root / 'masks' / sample}.png does not exist")
    ran(rows, "139", UNMASKED)
    assert failed(rows, "139", MASKED) == (
        f"sample 139: mask file {root / 'masks' / '139.png'} does not exist")
    for metric in (MASKED, UNMASKED):
        assert failed(rows, "dangling", metric) == (
            f"sample dangling: dangling.png is a broken symbolic link (to {root / 'gone.png'})")
        assert failed(rows, "loop", metric) == "sample loop: loop.png is a symbolic link loop"
        assert failed(rows, "pipe", metric) == "sample pipe: pipe.png is not a regular file"
        assert failed(rows, "phone", metric) == (
            "sample phone: phone.heic: Pillow has no reader for .heic files here; convert it "
            "(e.g. to PNG) or move it out of the folder")
        error = failed(rows, "broken", metric)
        assert error.startswith("sample broken: ") and "broken.jfif" in error
        assert failed(rows, "73.jpg", metric) == (
            "sample 73.jpg: 73.jpg shares its stem with 73.png; the stem names the sample and "
            "its mask: rename one")
        assert failed(rows, "73.png", metric) == (
            "sample 73.png: 73.png shares its stem with 73.jpg; the stem names the sample and "
            "its mask: rename one")
    samples = 9 + len(pictures)
    assert f"{samples} samples, {samples} evaluated now, 0 already stored, " \
           f"{7 + len(pictures) + 1} failed" in printed


def test_folder_mask_that_is_not_a_png_names_the_file(tmp_path):
    info = write_folder_fixture(tmp_path / "mine")
    masks = info["root"] / "masks"
    Image.open(masks / "73.png").save(masks / "73.jpg")
    (masks / "73.png").unlink()
    (masks / "139.png").rename(masks / "139.PNG")  # another case of .png is a PNG
    samples = {s.id: s for s in ImageFolder(info["root"])}
    assert samples["73"].meta["mask_error"] == (
        f"no mask 73.png for 73.png in {masks}: masks are PNG label maps, and 73.jpg is not one")
    assert samples["139"].mask == masks / "139.PNG" and "mask_error" not in samples["139"].meta


def test_folder_unreadable_file_is_a_failed_sample(tmp_path, monkeypatch):
    info = write_folder_fixture(tmp_path / "mine")
    (info["root"] / "42.png").chmod(0)
    if os.geteuid() == 0:  # root reads every file: make this one unreadable all the same
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: (
            Path(path).name != "42.png" and access(path, mode)))
    sample = {s.id: s for s in ImageFolder(info["root"])}["42"]
    with pytest.raises(InputError, match=r"^sample 42: cannot read 42.png: permission denied$"):
        load_image(sample)


def test_folder_coco_records_fail_their_own_images(tmp_path, capsys):
    info = write_coco_fixture(tmp_path / "coco")
    path = info["root"] / "annotations" / "instances_minival2014.json"
    coco = json.loads(path.read_text())
    coco["images"][1]["id"] = "abc"  # 000000000073.jpg
    for ann in coco["annotations"]:
        if ann["image_id"] == 42:
            ann["category_id"] = 999
    coco["images"].pop(2)  # 000000000139.jpg: not described at all
    path.write_text(json.dumps(coco))

    rows, _ = run(capsys, tmp_path, "--dataset", "folder", "--data-root",
                  info["root"] / "image", "--option", f"folder.coco={path}")
    for sample in ("000000000042", "000000000073", "000000000139"):
        ran(rows, sample, UNMASKED)
    assert failed(rows, "000000000042", MASKED) == (
        "sample 000000000042: instances_minival2014.json annotations[0] (000000000042.jpg) has "
        "category_id 999, which is not in categories")
    assert failed(rows, "000000000073", MASKED) == (
        "sample 000000000073: instances_minival2014.json images[1] (000000000073.jpg) has id "
        '"abc", expected an integer')
    assert failed(rows, "000000000139", MASKED) == (
        f"sample 000000000139: 000000000139.jpg is not among the images of {path}")


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "masks" / "categories.json").write_text('{"dog": 18, "cat": "x"}'),
     "folder categories: {root}/masks/categories.json: the label of 'cat' is \"x\", expected "
     "a whole number (its value in the masks)"),
    (lambda root: (root / "masks" / "categories.json").write_bytes(b'{"caf\xe9": 1}'),
     "folder categories: {root}/masks/categories.json is not UTF-8 text: byte 5 is 0xe9"),
    (lambda root: [p.unlink() for p in root.glob("*.png")],
     "dataset 'folder': {root} holds no image (files .bmp, .jpeg, .jpg, .png, .tif, .webp, "
     "... any format Pillow reads)"),
    # a name given twice: json would keep the last label without a word
    (lambda root: (root / "masks" / "categories.json").write_text('{"dog": 18, "dog": 1}'),
     "folder categories: {root}/masks/categories.json gives the key 'dog' twice (18 and 1) "
     "in one object: which is meant cannot be told"),
    # labels are category ids of an int32 label map: 1..2**31-1
    (lambda root: (root / "masks" / "categories.json").write_text('{"cat": 17, "dog": -18}'),
     "folder categories: {root}/masks/categories.json: the label of 'dog' is -18, outside "
     "1..2147483647 (labels are category ids: 0 is the background of a label map, and label "
     "maps are read as 32-bit integers)"),
    (lambda root: (root / "masks" / "categories.json").write_text('{"background": 0}'),
     "folder categories: {root}/masks/categories.json: the label of 'background' is 0, "
     "outside 1..2147483647 (labels are category ids: 0 is the background of a label map, "
     "and label maps are read as 32-bit integers)"),
    (lambda root: (root / "masks" / "categories.json").write_text(
        '{"dog": 100000000000000000000000}'),
     "folder categories: {root}/masks/categories.json: the label of 'dog' is "
     "100000000000000000000000, outside 1..2147483647 (labels are category ids: 0 is the "
     "background of a label map, and label maps are read as 32-bit integers)"),
])
def test_folder_unusable_files_are_refused_in_one_line(tmp_path, capsys, damage, message):
    info = write_folder_fixture(tmp_path / "mine")
    damage(info["root"])
    line = refused(capsys, "--dataset", "folder", "--data-root", info["root"],
                   "--out", tmp_path / "out")
    assert line == "error: " + message.format(root=info["root"])


@pytest.mark.parametrize("change, message", [
    ({"images": {"42": {}}}, "COCO instances: {path}: 'images' is an object, expected a list"),
    ({"annotations": [{"category_id": 18}]},
     "COCO instances: instances_minival2014.json annotations[0] has no 'image_id'; cannot "
     "tell which image it belongs to"),
    ({"categories": [{"id": "18", "name": "dog"}]},
     "COCO instances: instances_minival2014.json categories[0] is not {{'id': integer, "
     "'name': string}}: {{\"id\": \"18\", \"name\": \"dog\"}}"),
    ({"categories": [{"id": 18, "name": "dog"}, {"id": -1, "name": "cat"}]},
     "COCO instances: instances_minival2014.json categories[1] ('cat') has id -1, outside "
     "1..2147483647 (labels are category ids: 0 is the background of a label map, and label "
     "maps are read as 32-bit integers)"),
    ({"images": []},
     "COCO instances: {path} describes no image (its 'images' is empty): no image of the "
     "folder would have a mask"),
])
def test_folder_coco_unusable_files_are_refused_in_one_line(tmp_path, capsys, change, message):
    info = write_coco_fixture(tmp_path / "coco")
    path = info["root"] / "annotations" / "instances_minival2014.json"
    _edit(path, **change)
    line = refused(capsys, "--dataset", "folder", "--data-root", info["root"] / "image",
                   "--option", f"folder.coco={path}", "--out", tmp_path / "out")
    assert line == "error: " + message.format(path=path)


# -- synthetic -------------------------------------------------------------------------------
def test_synthetic_damaged_split_fails_the_broken_scenes_only(tmp_path, capsys):
    split = write_split(tmp_path / "split", seed=5, n=6)
    index = split / "scenes.jsonl"
    lines = index.read_text().splitlines()
    record = json.loads(lines[1])
    del record["mask"], record["caption"]
    lines[1] = json.dumps(record)  # line 2: keys missing
    lines[2] = lines[2][:40]  # line 3: not JSON
    lines.append(lines[0])  # line 7: the id of line 1 again
    index.write_text("\n".join(lines) + "\n")
    (split / "masks" / "0003.png").unlink()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(split / "masks" / "0004.png")
    Image.fromarray(np.full((64, 64), 77, np.uint8)).save(split / "masks" / "0005.png")

    rows, printed = run(capsys, tmp_path, "--dataset", "synthetic", "--data-root", split)
    ids = {s for s, _ in rows}
    assert ids == {"synthetic-5-0000", "synthetic-5-0001", "scenes.jsonl:3", "synthetic-5-0003",
                   "synthetic-5-0004", "synthetic-5-0005", "scenes.jsonl:7"}
    ran(rows, "synthetic-5-0000", MASKED)
    for metric in (MASKED, UNMASKED):
        assert failed(rows, "synthetic-5-0001", metric) == (
            "sample synthetic-5-0001: scenes.jsonl line 2 has no mask, caption")
        assert failed(rows, "scenes.jsonl:3", metric).startswith(
            "sample scenes.jsonl:3: scenes.jsonl line 3 is not JSON: Unterminated string")
        assert failed(rows, "scenes.jsonl:7", metric) == (
            "sample scenes.jsonl:7: scenes.jsonl line 7 repeats the id of line 1")
    for scene in ("0003", "0004", "0005"):
        ran(rows, f"synthetic-5-{scene}", UNMASKED)
    masks = split / "masks"
    assert failed(rows, "synthetic-5-0003", MASKED) == (
        f"sample synthetic-5-0003: mask file {masks / '0003.png'} does not exist")
    assert failed(rows, "synthetic-5-0004", MASKED) == (
        f"sample synthetic-5-0004: mask {masks / '0004.png'} is not a label map: uint8 pixels "
        "of shape (64, 64, 3), expected one whole number per pixel")
    assert failed(rows, "synthetic-5-0005", MASKED).startswith(
        f"sample synthetic-5-0005: mask {masks / '0005.png'} is not this scene's label map: "
        "it holds label(s) 77, the scene's are 0, ")
    assert "7 samples, 7 evaluated now, 0 already stored, 6 failed" in printed


def test_synthetic_without_an_index_is_refused_in_one_line(tmp_path, capsys):
    split = write_split(tmp_path / "split", seed=5, n=1)
    (split / "scenes.jsonl").unlink()
    line = refused(capsys, "--dataset", "synthetic", "--data-root", split,
                   "--out", tmp_path / "out")
    assert line == f"error: dataset 'synthetic': {split / 'scenes.jsonl'} does not exist"


def test_synthetic_line_that_is_not_utf8_is_its_own_failure(tmp_path):
    split = write_split(tmp_path / "split", seed=5, n=2)
    index = split / "scenes.jsonl"
    raw = index.read_bytes().split(b"\n")
    raw[1] = raw[1].replace(b"Describe", b"D\xe9scribe")
    index.write_bytes(b"\n".join(raw))
    samples = list(SyntheticScenes(split))
    assert [s.id for s in samples] == ["synthetic-5-0000", "scenes.jsonl:2"]
    with pytest.raises(InputError, match=r"^sample scenes.jsonl:2: scenes.jsonl line 2 is not "
                                         r"UTF-8 text \(byte \d+ of the line is 0xe9\)$"):
        load_image(samples[1])
    assert len(SyntheticScenes(split).fingerprint()) == 64


# -- grandf / openpsg ------------------------------------------------------------------------
def test_anno_json_broken_records_fail_their_own_samples(tmp_path, capsys):
    info = write_grandf_fixture(tmp_path / "GranDf")
    anno = info["root"] / "anno.json"
    records = json.loads(anno.read_text())
    image, caption, mask, categories = records[0]
    records += [[image, 5, mask, categories],
                [image, "A d\u00f6g.", mask, categories],
                [image, caption, mask, {"dog": "one"}]]
    anno.write_bytes(json.dumps(records, ensure_ascii=False).encode().replace(
        "d\u00f6g".encode(), b"d\xf6g"))

    rows, _ = run(capsys, tmp_path, "--dataset", "grandf", "--data-root", info["root"])
    ran(rows, "0", MASKED)
    ran(rows, "1", MASKED)
    for metric in (MASKED, UNMASKED):
        assert failed(rows, "2", metric) == (
            "sample 2: record 2 of anno.json: caption is an integer 5, expected a string")
        assert failed(rows, "3", metric) == (
            r"sample 3: record 3 of anno.json: caption is not UTF-8 text: 'A d\xf6g.'")
    ran(rows, "4", UNMASKED)
    assert failed(rows, "4", MASKED) == (
        "sample 4: record 4 of anno.json: category 'dog' has label \"one\", expected a whole "
        "number (its value in the mask)")


def test_anno_json_in_another_encoding_is_refused_in_one_line(tmp_path, capsys):
    info = write_grandf_fixture(tmp_path / "GranDf")
    anno = info["root"] / "anno.json"
    anno.write_bytes(anno.read_text().encode("utf-16"))
    line = refused(capsys, "--dataset", "grandf", "--data-root", info["root"],
                   "--out", tmp_path / "out")
    assert line == (f"error: grandf annotations: {anno} is not valid JSON at byte 0 (line 1, "
                    "column 1): Expecting value; it is not UTF-8 text either (byte 0 is 0xff)")


# -- keys given twice, labels out of range, duplicate references, empty datasets ------------
def test_a_key_given_twice_fails_the_record_that_gives_it(tmp_path):
    """json keeps the last value of a repeated key without a word: every reader refuses to
    guess. A record that gives a key twice fails its sample; a key that says which image a
    record describes, or the file's own keys, refuse the file."""
    info = write_coco_fixture(tmp_path / "coco")
    notes = info["root"] / "annotations"
    instances = notes / "instances_minival2014.json"
    instances.write_text(instances.read_text().replace('{"id": 73,', '{"id": 73, "id": 74,'))
    captions = notes / "captions_val2014.json"
    text = captions.read_text()
    captions.write_text(text.replace('"caption": "A cat resting on a couch."',
                                     '"caption": "A cat resting on a couch.", '
                                     '"caption": "A dog."'))
    samples = {s.id: s for s in CocoCaption(info["root"])}
    assert list(samples) == ["42", "images[1]", "139"]
    assert samples["images[1]"].meta["error"] == (
        "instances_minival2014.json images[1] gives the key 'id' twice (73 and 74)")
    assert samples["139"].meta["error"] == (
        "captions_val2014.json annotations[3] (a reference of image 139) gives the key "
        "'caption' twice (\"A cat resting on a couch.\" and \"A dog.\")")
    assert "error" not in samples["42"].meta

    captions.write_text(text.replace('"image_id": 42,', '"image_id": 42, "image_id": 73,', 1))
    with pytest.raises(InputError, match=r"^COCO captions: captions_val2014.json "
                                         r"annotations\[0\] gives the key 'image_id' twice "
                                         r"\(42 and 73\); cannot tell which image it "
                                         r"describes$"):
        list(CocoCaption(info["root"]))
    instances.write_text('{"images": [], "images": [{"id": 42}]}')
    with pytest.raises(InputError) as caught:
        len(CocoCaption(info["root"]))
    assert str(caught.value) == (
        f"COCO instances (image ids): {instances} gives the key 'images' twice ([] and "
        '[{"id": 42}]) in one object: which is meant cannot be told')

    grandf = write_grandf_fixture(tmp_path / "GranDf")
    anno = grandf["root"] / "anno.json"
    anno.write_text(anno.read_text().replace('{"brown dog": 1,', '{"brown dog": 1, '
                                                                 '"brown dog": 2,'))
    first = next(iter(GranDf(grandf["root"])))
    assert first.meta["mask_error"] == (
        "record 0 of anno.json: categories give the key 'brown dog' twice (1 and 2)")
    assert first.categories == {}
    load_image(first)  # only its mask metrics fail

    coco = write_coco_fixture(tmp_path / "coco2")
    path = coco["root"] / "annotations" / "instances_minival2014.json"
    raw = path.read_text()
    path.write_text(raw.replace('"category_id": 58,', '"category_id": 58, "category_id": 1,'))
    masks = {s.id: s.meta.get("mask_error") for s in ImageFolder(coco["root"] / "image",
                                                                 coco=path)}
    assert masks == {"000000000042": None, "000000000139": None, "000000000073": (
        "instances_minival2014.json annotations[2] (000000000073.jpg) gives the key "
        "'category_id' twice (58 and 1)")}
    path.write_text(raw.replace('"file_name": "000000000073.jpg",',
                                '"file_name": "000000000073.jpg", "file_name": "x.jpg",'))
    with pytest.raises(InputError, match=r"^COCO instances: instances_minival2014.json "
                                         r"images\[1\] gives the key 'file_name' twice "
                                         r"\(\"000000000073.jpg\" and \"x.jpg\"\); cannot "
                                         r"tell which image it describes$"):
        list(ImageFolder(coco["root"] / "image", coco=path))

    split = write_split(tmp_path / "split", seed=5, n=3)
    index = split / "scenes.jsonl"
    lines = index.read_text().splitlines()
    lines[0] = lines[0].replace('"seed": 5,', '"seed": 5, "seed": 6,')
    lines[1] = lines[1].replace('"id": "synthetic-5-0001",',
                                '"id": "synthetic-5-0001", "id": "synthetic-5-0000",')
    index.write_text("\n".join(lines) + "\n")
    scenes = {s.id: s.meta.get("error") for s in SyntheticScenes(split)}
    assert scenes == {
        "synthetic-5-0000": "scenes.jsonl line 1 gives the key 'seed' twice (5 and 6)",
        "scenes.jsonl:2": "scenes.jsonl line 2 gives the key 'id' twice (\"synthetic-5-0001\" "
                          "and \"synthetic-5-0000\")",
        "synthetic-5-0002": None}


LABEL_RANGE = ("outside 1..2147483647 (labels are category ids: 0 is the background of a "
               "label map, and label maps are read as 32-bit integers)")


def test_labels_outside_1_to_int32_fail_per_record_and_refuse_shared_tables(tmp_path):
    """Labels are category ids in a label map read as int32, 0 the background (TAM's
    reference also marks a word with no category -1): a per-record table with such a label
    fails that record's mask metrics; a shared table (categories.json, the ``categories=``
    option, a COCO file's categories) refuses the run."""
    grandf = write_grandf_fixture(tmp_path / "GranDf")
    anno = grandf["root"] / "anno.json"
    records = json.loads(anno.read_text())
    image, caption, mask, _ = records[0]
    records += [[image, caption, mask, {"brown dog": -1, "red blanket": 2}],
                [image, caption, mask, {"brown dog": 1, "red blanket": 0}],
                [image, caption, mask, {"dog": 10**23}]]  # written as a JSON integer
    anno.write_text(json.dumps(records))
    samples = list(GranDf(grandf["root"]))
    assert [s.meta.get("mask_error") for s in samples] == [
        None, None,
        f"record 2 of anno.json: category 'brown dog' has label -1, {LABEL_RANGE}",
        f"record 3 of anno.json: category 'red blanket' has label 0, {LABEL_RANGE}",
        f"record 4 of anno.json: category 'dog' has label 100000000000000000000000, "
        f"{LABEL_RANGE}"]
    load_image(samples[2])  # the sample runs; only its mask metrics fail
    with pytest.raises(InputError) as caught:
        load_mask(samples[2], (64, 48))
    assert str(caught.value) == (
        f"sample 2: record 2 of anno.json: category 'brown dog' has label -1, {LABEL_RANGE}")

    psg = write_openpsg_fixture(tmp_path / "OpenPSG")
    anno = psg["root"] / "anno.json"
    records = json.loads(anno.read_text())
    records[1][3]["cup"] = -6
    anno.write_text(json.dumps(records))
    assert [s.meta.get("mask_error") for s in OpenPSG(psg["root"])] == [
        None, f"record 1 of anno.json: category 'cup' has label -6, {LABEL_RANGE}"]

    folder = write_folder_fixture(tmp_path / "mine")
    with pytest.raises(InputError) as caught:
        ImageFolder(folder["root"], categories={"dog": 18, "cat": -17}).categories()
    assert str(caught.value) == f"folder categories: the label of 'cat' is -17, {LABEL_RANGE}"

    split = write_split(tmp_path / "split", seed=5, n=2)
    index = split / "scenes.jsonl"
    lines = index.read_text().splitlines()
    record = json.loads(lines[1])
    record["categories"] = {name: -1 for name in record["categories"]}
    lines[1] = json.dumps(record)
    index.write_text("\n".join(lines) + "\n")
    shown = " ".join(json.dumps(record["categories"]).split())[:40]
    assert [s.meta.get("error") for s in SyntheticScenes(split)] == [
        None, f"scenes.jsonl line 2: categories is {shown}, expected an object of name -> "
              "label (1..2147483647)"]


def test_coco_references_one_per_annotation_and_none_for_an_uncaptioned_image(tmp_path):
    """The same caption record listed twice is one reference; records that differ (another
    id, another caption) are distinct references; an image with no caption record has none,
    and still runs: no metric scores references."""
    info = write_coco_fixture(tmp_path / "coco")
    path = info["root"] / "annotations" / "captions_val2014.json"
    captions = json.loads(path.read_text())
    notes = captions["annotations"]
    by_image = {}
    for record in notes:
        by_image.setdefault(record["image_id"], []).append(record)
    first_42, first_139 = by_image[42][0], by_image[139][0]
    notes += [
        dict(first_42),  # the same annotation again: one reference
        {**first_42, "id": 500},  # another annotator, the same words: a second reference
        {**first_139, "caption": "A grey cat."},  # the id of another caption: both kept
        {"image_id": 139, "caption": "Another view."},  # no id, listed twice: one
        {"image_id": 139, "caption": "Another view."},
    ]
    captions["annotations"] = [r for r in notes if r["image_id"] != 73]
    path.write_text(json.dumps(captions))
    samples = {s.id: s for s in CocoCaption(info["root"])}
    assert samples["42"].references == ["A dog sits next to a man.",
                                        "A man and his brown dog on the grass.",
                                        "A dog sits next to a man."]
    assert samples["139"].references == ["A cat resting on a couch.", "Black cat, purple sofa.",
                                         "A grey cat.", "Another view."]
    assert samples["73"].references == [] and "error" not in samples["73"].meta
    assert load_image(samples["73"]).size == (64, 48)


@pytest.mark.parametrize("dataset, empty, message", [
    ("coco-caption", lambda root: _edit(root / "annotations" / "instances_minival2014.json",
                                        images=[]),
     "dataset 'coco-caption': {root}/annotations/instances_minival2014.json lists no image "
     "(its 'images' is empty): there is no sample to run"),
    ("grandf", lambda root: (root / "anno.json").write_text("[]"),
     "dataset 'grandf': {root}/anno.json lists no record (an empty list): there is no sample "
     "to run"),
    ("openpsg", lambda root: (root / "anno.json").write_text(" [ ]\n"),
     "dataset 'openpsg': {root}/anno.json lists no record (an empty list): there is no "
     "sample to run"),
    ("synthetic", lambda root: (root / "scenes.jsonl").write_bytes(b""),
     "dataset 'synthetic': {root}/scenes.jsonl lists no scene (the file is empty): there is "
     "no sample to run"),
    ("synthetic", lambda root: (root / "scenes.jsonl").write_text("\n  \n"),
     "dataset 'synthetic': {root}/scenes.jsonl lists no scene (it has only blank lines): "
     "there is no sample to run"),
    ("folder", lambda root: [p.unlink() for p in root.glob("*.png")],
     "dataset 'folder': {root} holds no image (files .bmp, .jpeg, .jpg, .png, .tif, .webp, "
     "... any format Pillow reads)"),
])
def test_an_empty_dataset_is_refused_by_every_reader(tmp_path, capsys, dataset, empty,
                                                     message):
    writers = {"coco-caption": write_coco_fixture, "grandf": write_grandf_fixture,
               "openpsg": write_openpsg_fixture, "folder": write_folder_fixture,
               "synthetic": lambda root: {"root": write_split(root, seed=5, n=1)}}
    root = writers[dataset](tmp_path / "data")["root"]
    empty(root)
    line = refused(capsys, "--dataset", dataset, "--data-root", root,
                   "--out", tmp_path / "out")
    assert line == "error: " + message.format(root=root)
    assert not (tmp_path / "out" / "results.sqlite").exists()


def test_folder_mask_that_is_a_folder_says_so(tmp_path):
    info = write_folder_fixture(tmp_path / "mine")
    masks = info["root"] / "masks"
    (masks / "42.png").unlink()
    (masks / "42.png").mkdir()
    (masks / "139.png").unlink()
    (masks / "139.PNG").mkdir()  # another case of .png: still the mask's name
    (masks / "73.png").unlink()
    os.mkfifo(masks / "73.png")  # never opened: the mask reader refuses it by its mode
    samples = {s.id: s for s in ImageFolder(info["root"])}
    assert samples["42"].meta["mask_error"] == f"mask {masks / '42.png'} is a folder, not a file"
    assert samples["139"].meta["mask_error"] == (
        f"mask {masks / '139.PNG'} is a folder, not a file")
    assert "mask_error" not in samples["73"].meta
    load_image(samples["42"])  # the image runs; its mask metrics fail
    with pytest.raises(InputError) as caught:
        load_mask(samples["42"], (64, 48))
    assert str(caught.value) == f"sample 42: mask {masks / '42.png'} is a folder, not a file"
    with pytest.raises(InputError) as caught:
        load_mask(samples["73"], (64, 48))
    assert str(caught.value) == (
        f"sample 73: mask file {masks / '73.png'}: a named pipe (FIFO), not an image file")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="no /proc here")
def test_a_virtual_file_is_named_as_one_not_as_an_empty_file(tmp_path, monkeypatch):
    """/proc and /sys files report 0 bytes (or 4096) whatever they hold: refused as virtual
    files, never opened; elsewhere a 0-byte file that yields data is named a virtual file."""
    import mmxai.images

    info = write_folder_fixture(tmp_path / "mine")
    os.symlink("/proc/self/status", info["root"] / "status.png")
    sample = {s.id: s for s in ImageFolder(info["root"])}["status"]
    with pytest.raises(InputError) as caught:
        load_image(sample)
    assert str(caught.value) == (
        f"sample status: image file {info['root'] / 'status.png'}: a virtual file (procfs, "
        "under /proc), not an image file")
    with pytest.raises(InputError) as caught:
        read_image("/proc/self/status", "image 'status'")
    assert str(caught.value) == ("image 'status': a virtual file (procfs, under /proc), not "
                                 "an image file")
    monkeypatch.setattr(mmxai.images, "_kernel_file", lambda device: None)  # debugfs, FUSE
    with pytest.raises(InputError) as caught:
        read_image("/proc/self/status", "image 'status'")
    assert str(caught.value) == ("image 'status': a virtual file (its size reads 0 bytes, "
                                 "yet reading it gives data), not an image file")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError) as caught:
        read_image(tmp_path / "empty.png", "image 'empty'")
    assert str(caught.value) == "image 'empty': an empty file (0 bytes)"
