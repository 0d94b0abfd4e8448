"""A plain folder of images, with optional ground truth.

``folder`` reads every image directly in ``root`` (sorted by name; the sample id is the
file stem). Ground truth, optional, either way:

- ``masks``: a folder of PNG label maps with the images' stems (default ``root/masks`` when
  it exists), and ``categories``: a dict or a JSON file mapping a name to its label
  (default ``categories.json`` in the masks folder or in ``root``);
- ``coco``: a COCO instances JSON read with pycocotools: each image's annotations become a
  label map of category ids (larger objects first, so small ones stay visible), and the
  categories come from the JSON.

``prompt`` sets the question (default: TAM's COCO caption prompt); ``limit`` keeps the first
N images.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmxai.dataset import Sample
from mmxai.datasets.tam_formats import COCO_PROMPT, FileDataset, file_fingerprint, read_json
from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class ImageFolder(FileDataset):
    name = "folder"
    summary = ("Your own images: every image in a folder, with optional PNG label maps or a "
               "COCO instances JSON as ground truth.")
    citation = ""
    default_prompt = COCO_PROMPT

    def __init__(self, root: str | Path | None = None, *, masks: str | Path | None = None,
                 coco: str | Path | None = None,
                 categories: dict[str, int] | str | Path | None = None,
                 **options: Any) -> None:
        super().__init__(root, masks=masks, coco=coco, categories=categories, **options)
        if not self.root.is_dir():
            raise InputError(f"dataset 'folder': {self.root} is not a folder")
        if masks is not None and coco is not None:
            raise InputError("dataset 'folder': give either `masks` or `coco`, not both")
        default_masks = self.root / "masks"
        self.masks = Path(masks) if masks is not None else (
            default_masks if default_masks.is_dir() and coco is None else None)
        self.coco_path = Path(coco) if coco is not None else None
        self._categories_option = categories
        self._coco: Any = None

    # -- ground truth --------------------------------------------------------------------------
    def _categories_file(self) -> Path | None:
        if isinstance(self._categories_option, (str, Path)):
            return Path(self._categories_option)
        if self._categories_option is None:
            for folder in (self.masks, self.root):
                if folder is not None and (folder / "categories.json").is_file():
                    return folder / "categories.json"
        return None

    def categories(self) -> dict[str, int]:
        """Category name -> label, from the COCO JSON, the option or ``categories.json``."""
        if self.coco_path is not None:
            return {c["name"]: int(c["id"]) for c in self._load_coco().dataset.get(
                "categories", [])}
        if isinstance(self._categories_option, dict):
            return {str(k): int(v) for k, v in self._categories_option.items()}
        path = self._categories_file()
        if path is None:
            return {}
        table = read_json(path, "folder categories")
        if not isinstance(table, dict):
            raise InputError(f"folder categories: {path} must map names to labels")
        return {str(k): int(v) for k, v in table.items()}

    def _load_coco(self) -> Any:
        if self._coco is None:
            from pycocotools.coco import COCO

            read_json(self.coco_path, "COCO instances")  # a clear error before pycocotools'
            with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
                self._coco = COCO(str(self.coco_path))
        return self._coco

    def _coco_mask(self, file_name: str) -> tuple[np.ndarray | None, str | None]:
        """The label map of one image from the COCO JSON (None if the JSON lacks the image)."""
        coco = self._load_coco()
        matches = [i for i in coco.imgs.values() if Path(i["file_name"]).name == file_name]
        if not matches:
            return None, None
        info = matches[0]
        label_map = np.zeros((int(info["height"]), int(info["width"])), dtype=np.int32)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]]))
        try:
            with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                for ann in sorted(annotations, key=lambda a: -float(a.get("area", 0))):
                    label_map[coco.annToMask(ann) > 0] = int(ann["category_id"])
        except Exception as exc:  # malformed segmentations: report on this sample only
            return None, f"cannot rasterise the COCO annotations of {file_name}: {exc}"
        return label_map, None

    # -- the Dataset interface -----------------------------------------------------------------
    def images(self) -> list[Path]:
        files = sorted(p for p in self.root.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return self._cut(files)

    def __iter__(self) -> Iterator[Sample]:
        categories = self.categories()
        for image in self.images():
            meta: dict[str, Any] = {"file_name": image.name}
            mask: Path | np.ndarray | None = None
            if self.coco_path is not None:
                mask, error = self._coco_mask(image.name)
                if error:
                    meta["mask_error"] = error
            elif self.masks is not None:
                mask = self.masks / f"{image.stem}.png"
            yield Sample(id=image.stem, image=image, prompt=self.prompt, mask=mask,
                         categories=dict(categories), meta=meta)

    def __len__(self) -> int:
        return len(self.images())

    def fingerprint(self) -> str:
        files = [p for p in (self.coco_path, self._categories_file()) if p is not None]
        listed = list(self.images())
        if self.masks is not None:
            listed += [self.masks / f"{p.stem}.png" for p in self.images()]
        return file_fingerprint(files, listed, self.root)


@hookimpl
def register_datasets(register):
    register(ImageFolder)
