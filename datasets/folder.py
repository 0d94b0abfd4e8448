"""A plain folder of images, with optional ground truth.

``folder`` reads every file directly in ``root`` whose suffix names a format Pillow can open
here (``PIL.Image.registered_extensions()``: ``.jpg .png .webp .tif .jfif .ppm .tga .jp2
.avif`` and more), sorted by name; the sample id is the file stem. Ground truth, optional,
either way:

- ``masks``: a folder of PNG label maps with the images' stems (default ``root/masks`` when
  it exists), and ``categories``: a dict or a JSON file mapping a name to its label
  (default ``categories.json`` in the masks folder or in ``root``);
- ``coco``: a COCO instances JSON: each image's annotations become a label map of category
  ids (larger objects first, so small ones stay visible), rasterised with pycocotools, and
  the categories come from the JSON.

``prompt`` sets the question (default: TAM's COCO caption prompt); ``limit`` keeps the first
N images.

Nothing in the folder that looks like an image vanishes: a broken symbolic link, an entry
that cannot be read, a file Pillow cannot open, an image format Pillow has no reader for
(``.heic``, ``.svg``, raw camera files ...) and two images sharing a stem are each a sample
that fails with its cause. Other files (``README``, ``.json``) are not images and are not
read. ``docs/evaluation.md`` (Datasets, Hostile input) lists every case.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmxai.dataset import Sample
from mmxai.datasets.tam_formats import (
    COCO_PROMPT,
    FileDataset,
    bad_label,
    file_fingerprint,
    is_whole,
    kind,
    not_utf8,
    read_json,
    repeated_key,
    show,
    show_bytes,
)
from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl

#: Image formats Pillow has no reader for (without a plugin such as pillow-heif): such a file
#: is a sample that fails with this cause, not a file silently left out.
FOREIGN_SUFFIXES = frozenset({".heic", ".heif", ".svg", ".jxl", ".exr", ".dng", ".cr2",
                              ".nef", ".arw", ".raw"})


def image_suffixes() -> frozenset[str]:
    """The suffixes of the formats Pillow can open here, plugins included (``.pdf`` and
    ``.palm`` are formats Pillow only writes)."""
    from PIL import Image

    return frozenset(suffix for suffix, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN or fmt == "MPO")  # MPO opens through JPEG's reader


@dataclass
class _File:
    """An entry of the folder that is (or looks like) an image: the sample's id and, when it
    cannot be read, why."""

    path: Path
    id: str
    error: str | None = None


@dataclass
class _CocoTruth:
    """A checked COCO instances file: what each image of the folder gets from it."""

    categories: dict[str, int]
    images: dict[str, dict[str, Any]]  # file name -> its images[] record
    annotations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # file name -> why its mask fails
    coco: Any = None


class ImageFolder(FileDataset):
    name = "folder"
    summary = ("Your own images: every image in a folder, with optional PNG label maps or a "
               "COCO instances JSON as ground truth.")
    citation = ""
    default_prompt = COCO_PROMPT

    @dataclass
    class Options(FileDataset.Options):
        #: A folder of PNG label maps named like the images (default ``root/masks``).
        masks: Path | None = None
        #: A COCO instances JSON whose annotations are the ground truth.
        coco: Path | None = None
        #: Name -> label in the masks: a dict, or a JSON file of one.
        categories: dict[str, int] | Path | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.masks is not None and self.coco is not None:
                raise ValueError("give either `masks` or `coco`, not both")
            if self.coco is not None and self.categories is not None:
                raise ValueError("with `coco` the categories come from the COCO file; "
                                 "leave `categories` out")

    def __init__(self, root: str | Path | None = None, **options: Any) -> None:
        super().__init__(root, **options)
        if not self.root.is_dir():
            raise InputError(f"dataset 'folder': {self.root} is not a folder")
        masks, coco = self.options.masks, self.options.coco
        if masks is not None and not masks.is_dir():
            raise InputError(f"dataset 'folder': masks={masks} is not a folder")
        default_masks = self.root / "masks"
        self.masks = masks if masks is not None else (
            default_masks if default_masks.is_dir() and coco is None else None)
        self.coco_path = coco
        self._categories_option = self.options.categories
        self._files: list[_File] | None = None
        self._mask_names: dict[str, list[str]] | None = None
        self._categories: dict[str, int] | None = None
        self._coco: _CocoTruth | None = None

    # -- the images ----------------------------------------------------------------------------
    def _listing(self) -> list[_File]:
        """Every image-like entry directly in ``root``, sorted by name, after ``limit``."""
        if self._files is None:
            readable = image_suffixes()
            try:
                paths = sorted(self.root.iterdir())
            except OSError as exc:
                raise InputError(f"dataset 'folder': cannot list {self.root}: "
                                 f"{exc.strerror or exc}") from exc
            files = []
            for path in paths:
                suffix = path.suffix.lower()
                if suffix not in readable and suffix not in FOREIGN_SUFFIXES:
                    continue  # README, categories.json ...: not images
                problem = _entry_problem(path, suffix in FOREIGN_SUFFIXES)
                if problem is not _FOLDER:
                    files.append(_File(path, path.stem, problem))
            if not files:
                shown = ", ".join(sorted(readable & {".jpg", ".jpeg", ".png", ".webp",
                                                      ".tif", ".bmp"}))
                raise InputError(f"dataset 'folder': {self.root} holds no image (files "
                                 f"{shown}, ... any format Pillow reads)")
            stems = Counter(f.id for f in files)
            shared = {stem: [f.path.name for f in files if f.id == stem]
                      for stem, count in stems.items() if count > 1}
            for f in files:
                if f.id in shared:
                    others = [name for name in shared[f.id] if name != f.path.name]
                    f.error = f.error or (f"{f.path.name} shares its stem with "
                                          f"{', '.join(others)}; the stem names the sample "
                                          "and its mask: rename one")
                    f.id = f.path.name
            self._files = self._cut(files)
        return self._files

    def images(self) -> list[Path]:
        """The image files of the samples (those that fail included), in sample order."""
        return [f.path for f in self._listing()]

    # -- ground truth --------------------------------------------------------------------------
    def _categories_file(self) -> Path | None:
        if isinstance(self._categories_option, Path):
            return self._categories_option
        if self._categories_option is None and self.coco_path is None:
            for folder in (self.masks, self.root):
                if folder is not None and (folder / "categories.json").is_file():
                    return folder / "categories.json"
        return None

    def categories(self) -> dict[str, int]:
        """Category name -> label, from the COCO JSON, the option or ``categories.json``.

        The table is every sample's ground truth: a broken one refuses the run in one line.
        """
        if self._categories is None:
            self._categories = self._read_categories()
        return dict(self._categories)

    def _read_categories(self) -> dict[str, int]:
        if self.coco_path is not None:
            return dict(self._load_coco().categories)
        if isinstance(self._categories_option, dict):
            table = self._categories_option  # typed by the options: str -> int
            for name, label in table.items():
                if bad_label(label):
                    raise InputError(f"folder categories: the label of {name!r} is "
                                     f"{label}, {bad_label(label)}")
            return dict(table)
        path = self._categories_file()
        if path is None:
            return {}
        # strict UTF-8 (names meet words), and a name given twice refuses the file
        table = read_json(path, "folder categories")
        if not isinstance(table, dict):
            raise InputError(f"folder categories: {path} holds {kind(table)}, expected an "
                             "object mapping each name to its label")
        for name, label in table.items():
            if not is_whole(label):
                raise InputError(f"folder categories: {path}: the label of {name!r} is "
                                 f"{show(label)}, expected a whole number (its value in "
                                 "the masks)")
            if bad_label(label):
                raise InputError(f"folder categories: {path}: the label of {name!r} is "
                                 f"{show(label)}, {bad_label(label)}")
        return dict(table)

    def _mask_for(self, image: Path) -> tuple[Path, str | None]:
        """The label map of ``image`` in the masks folder, and why it fails if it does. A
        missing one is left to :func:`mmxai.dataset.load_mask`, which fails the sample's
        mask metrics with ``mask file … does not exist``."""
        assert self.masks is not None
        exact = self.masks / f"{image.stem}.png"
        if exact.is_file():
            return exact, None
        if self._mask_names is None:
            try:
                entries = list(self.masks.iterdir())
            except OSError:
                entries = []
            self._mask_names = {}
            for entry in entries:
                self._mask_names.setdefault(entry.stem, []).append(entry.name)
        names = sorted(self._mask_names.get(image.stem, []))
        pngs = [n for n in names if Path(n).suffix.lower() == ".png"]
        if os.path.lexists(exact) or len(pngs) == 1:
            # One entry has the mask's name (masks/cat.png or masks/cat.PNG) but is not a
            # regular file: say what it is. A FIFO or a device is left to the mask reader,
            # which refuses it without opening it.
            found = exact if os.path.lexists(exact) else self.masks / pngs[0]
            if os.path.isdir(found):
                return found, f"mask {found} is a folder, not a file"
            if os.path.islink(found) and not os.path.exists(found):
                return found, (f"mask {found} is a broken symbolic link (to "
                               f"{os.readlink(found)})")
            return found, None
        if pngs:
            return exact, f"several masks for {image.name} in {self.masks}: {', '.join(pngs)}"
        if names:
            return exact, (f"no mask {exact.name} for {image.name} in {self.masks}: masks are "
                           f"PNG label maps, and {names[0]} is not one")
        return exact, None

    def _load_coco(self) -> _CocoTruth:
        if self._coco is None:
            assert self.coco_path is not None
            self._coco = _read_coco(self.coco_path)
        return self._coco

    def _coco_mask(self, file_name: str) -> tuple[np.ndarray | None, str | None]:
        """The label map of one image from the COCO JSON, or why there is none."""
        truth = self._load_coco()
        if file_name in truth.errors:
            return None, truth.errors[file_name]
        info = truth.images.get(file_name)
        if info is None:
            return None, f"{file_name} is not among the images of {self.coco_path}"
        label_map = np.zeros((info["height"], info["width"]), dtype=np.int32)
        try:
            with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                annotations = truth.annotations.get(file_name, [])
                for ann in sorted(annotations, key=lambda a: -float(a.get("area", 0))):
                    label_map[truth.coco.annToMask(ann) > 0] = ann["category_id"]
        except Exception as exc:  # malformed segmentations: report on this sample only
            cause = " ".join(str(exc).split()) or type(exc).__name__
            return None, f"cannot rasterise the COCO annotations of {file_name}: {cause}"
        return label_map, None

    # -- the Dataset interface -----------------------------------------------------------------
    def __iter__(self) -> Iterator[Sample]:
        files = self._listing()
        categories = self.categories()
        for f in files:
            meta: dict[str, Any] = {"file_name": f.path.name}
            if f.error:
                meta["error"] = f.error
                yield Sample(id=f.id, image=f.path, prompt=self.prompt, meta=meta)
                continue
            mask: Path | np.ndarray | None = None
            error = None
            if self.coco_path is not None:
                mask, error = self._coco_mask(f.path.name)
            elif self.masks is not None:
                mask, error = self._mask_for(f.path)
            if error:
                meta["mask_error"] = error
            yield Sample(id=f.id, image=f.path, prompt=self.prompt, mask=mask,
                         categories=dict(categories), meta=meta)

    def __len__(self) -> int:
        return len(self._listing())

    def fingerprint(self) -> str:
        files = [p for p in (self.coco_path, self._categories_file()) if p is not None]
        listed = self.images()
        if self.masks is not None:
            listed += [self._mask_for(p)[0] for p in self.images()]
        return file_fingerprint(files, listed, self.root)


_FOLDER = "folder"  # an entry to pass over: a directory, whatever its name


def _entry_problem(path: Path, foreign: bool) -> str | None:
    """Why the image entry ``path`` cannot be read (None if it can be tried)."""
    try:
        info = path.stat()  # follows symbolic links
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path.name} is a symbolic link loop"
        if os.path.islink(path):
            return f"{path.name} is a broken symbolic link (to {os.readlink(path)})"
        return f"cannot read {path.name}: {exc.strerror or exc}"
    if stat.S_ISDIR(info.st_mode):
        return _FOLDER
    if not stat.S_ISREG(info.st_mode):
        return f"{path.name} is not a regular file"  # a FIFO would block the reader
    if not os.access(path, os.R_OK):
        return f"cannot read {path.name}: permission denied"
    if foreign:
        return (f"{path.name}: Pillow has no reader for {path.suffix} files here; convert "
                "it (e.g. to PNG) or move it out of the folder")
    return None


def _read_coco(path: Path) -> _CocoTruth:
    """A COCO instances file checked record by record.

    The file as a whole (its shape, its categories, shared by every image) is refused in one
    line; a problem of one image's record or annotations fails that image's mask.
    """
    what = "COCO instances"
    data = read_json(path, what, per_record_encoding=True)
    if not isinstance(data, dict):
        raise InputError(f"{what}: {path} holds {kind(data)}, expected a JSON object with "
                         "'images', 'annotations' and 'categories' lists")
    for key in ("images", "annotations", "categories"):
        if key in data and not isinstance(data[key], list):
            raise InputError(f"{what}: {path}: '{key}' is {kind(data[key])}, expected a list")
    if "images" not in data:
        raise InputError(f"{what}: {path} has no 'images' list")
    if not data["images"]:
        raise InputError(f"{what}: {path} describes no image (its 'images' is empty): no "
                         "image of the folder would have a mask")
    images, annotations = data["images"], data.get("annotations", [])
    categories = data.get("categories", [])
    if annotations and not categories:
        raise InputError(f"{what}: {path} has annotations but no 'categories'")

    names: dict[str, int] = {}
    for k, cat in enumerate(categories):
        where = f"{what}: {path.name} categories[{k}]"
        if repeated_key(cat):
            raise InputError(f"{where} gives {repeated_key(cat)}")
        if not (isinstance(cat, dict) and is_whole(cat.get("id"))
                and isinstance(cat.get("name"), str)):
            raise InputError(f"{where} is not {{'id': integer, 'name': string}}: {show(cat)}")
        if bad_label(cat["id"]):
            raise InputError(f"{where} ({show_bytes(cat['name'])}) has id {cat['id']}, "
                             f"{bad_label(cat['id'])}")
        if not_utf8(cat["name"]):
            raise InputError(f"{where}: name {show_bytes(cat['name'])} is not UTF-8 text")
        if cat["name"] in names or cat["id"] in names.values():
            raise InputError(f"{where} repeats the name or the id of another category: "
                             f"{show(cat)}")
        names[cat["name"]] = cat["id"]

    by_name: dict[str, list[int]] = {}
    for i, record in enumerate(images):
        file_name = record.get("file_name") if isinstance(record, dict) else None
        if repeated_key(record, key="file_name"):
            raise InputError(f"{what}: {path.name} images[{i}] gives "
                             f"{repeated_key(record, key='file_name')}; cannot tell which "
                             "image it describes")
        if not isinstance(file_name, str) or not Path(file_name).name:
            raise InputError(f"{what}: {path.name} images[{i}] has no file_name "
                             f"({show(record)}); cannot tell which image it describes")
        by_name.setdefault(Path(file_name).name, []).append(i)
    truth = _CocoTruth(categories=names, images={})
    owner: dict[str, str] = {}  # the image id as written (JSON) -> file name
    for name, indices in by_name.items():
        where = f"{path.name} images[{indices[0]}] ({name})"
        record = images[indices[0]]
        key = json.dumps(record.get("id"))
        height, width = record.get("height"), record.get("width")
        if len(indices) > 1:
            truth.errors[name] = (f"{name} is described twice in {path.name} ("
                                  f"{', '.join(f'images[{i}]' for i in indices)})")
        elif repeated_key(record):
            truth.errors[name] = f"{where} gives {repeated_key(record)}"
        elif not is_whole(record.get("id")):
            truth.errors[name] = f"{where} has id {show(record.get('id'))}, expected an integer"
        elif not (is_whole(height) and is_whole(width) and height > 0 and width > 0):
            truth.errors[name] = (f"{where} has height {show(height)} and width {show(width)},"
                                  " expected whole numbers > 0")
        if key in owner:  # two files, one id: whose are the annotations?
            for other in (owner[key], name):
                truth.errors.setdefault(other, f"{path.name}: {owner[key]} and {name} have "
                                               f"the same image id {show(record.get('id'))}")
        owner.setdefault(key, name)
        if name not in truth.errors:
            truth.images[name] = record
    for name in truth.errors:
        truth.images.pop(name, None)

    for j, ann in enumerate(annotations):
        where = f"{path.name} annotations[{j}]"
        if not isinstance(ann, dict) or "image_id" not in ann:
            said = "has no 'image_id'" if isinstance(ann, dict) else f"is {kind(ann)}"
            raise InputError(f"{what}: {where} {said}; cannot tell which image it belongs to")
        if repeated_key(ann, key="image_id"):
            raise InputError(f"{what}: {where} gives {repeated_key(ann, key='image_id')}; "
                             "cannot tell which image it belongs to")
        name = owner.get(json.dumps(ann["image_id"]))
        if name is None or name in truth.errors:
            continue  # an image not described here, or one whose mask fails already
        segmentation = ann.get("segmentation")
        if repeated_key(ann):
            truth.errors[name] = f"{where} ({name}) gives {repeated_key(ann)}"
        elif (ann.get("category_id") not in names.values()
              or not is_whole(ann["category_id"])):
            truth.errors[name] = (f"{where} ({name}) has category_id "
                                  f"{show(ann.get('category_id'))}, which is not in "
                                  "categories")
        elif not isinstance(segmentation, (list, dict)):
            truth.errors[name] = (f"{where} ({name}) has segmentation {show(segmentation)}, "
                                  "expected polygons or an RLE")
        else:
            truth.annotations.setdefault(name, []).append(ann)
    for name in truth.errors:
        truth.images.pop(name, None)

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
        truth.coco = COCO()
    truth.coco.imgs = {record["id"]: record for record in truth.images.values()}
    return truth


@hookimpl
def register_datasets(register):
    register(ImageFolder)
