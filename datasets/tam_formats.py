"""Readers for the data TAM evaluates on: COCO Caption (minival), GranDf and OpenPSG.

The layouts are those of TAM's formatted release (``docs/evaluation.md``, Datasets):

- ``coco-caption``: ``annotations/instances_minival2014.json`` (only ``images[].id``),
  ``annotations/captions_val2014.json`` (the references), ``image/{id:012d}.jpg`` and
  ``seg_label/{id:012d}.png``, a grayscale label map of COCO category ids. A missing label
  map is an all-zero mask, as in the reference (``meta["mask_missing"]`` records it).
- ``grandf`` / ``openpsg``: ``anno.json``, a list of ``[image, caption, mask, categories]``
  records, paths relative to the folder, the mask a label map of the record's own ids.

Samples are yielded lazily with paths; a missing or broken file is still yielded and only
fails when the evaluator loads it (``mmxai.dataset.load_image`` / ``load_mask``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from mmxai.dataset import Dataset, Sample
from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl
from mmxai.words import COCO_CATEGORIES

COCO_PROMPT = "Write a one-sentence caption for this image:"
GRANDF_PROMPT = "Write a description for this image using around two sentences:"
OPENPSG_PROMPT = "Write a description for this image using around three sentences:"

TAM_BIBTEX = """@inproceedings{li2025tam,
  title     = {Token Activation Map to Visually Explain Multimodal {LLMs}},
  author    = {Li, Yi and Wang, Hualiang and Ding, Xinpeng and Wang, Haonan and Li, Xiaomeng},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2025},
  note      = {arXiv:2506.23270}
}"""

COCO_BIBTEX = """@inproceedings{lin2014coco,
  title     = {Microsoft {COCO}: Common Objects in Context},
  author    = {Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and Hays, James and
               Perona, Pietro and Ramanan, Deva and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2014}
}
@article{chen2015cococaptions,
  title   = {Microsoft {COCO} Captions: Data Collection and Evaluation Server},
  author  = {Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and
             Gupta, Saurabh and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  journal = {arXiv preprint arXiv:1504.00325},
  year    = {2015}
}"""

GLAMM_BIBTEX = """@inproceedings{rasheed2024glamm,
  title     = {{GLaMM}: Pixel Grounding Large Multimodal Model},
  author    = {Rasheed, Hanoona and Maaz, Muhammad and Shaji, Sahal and Shaker, Abdelrahman and
               Khan, Salman and Cholakkal, Hisham and Anwer, Rao M. and Xing, Eric and
               Yang, Ming-Hsuan and Khan, Fahad S.},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern
               Recognition (CVPR)},
  year      = {2024}
}"""

OPENPSG_BIBTEX = """@inproceedings{zhou2024openpsg,
  title     = {{OpenPSG}: Open-set Panoptic Scene Graph Generation via Large Multimodal Models},
  author    = {Zhou, Zijian and Zhu, Zheng and Caesar, Holger and Shi, Miaojing},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024}
}"""


def file_fingerprint(files: Iterable[Path], listed: Iterable[Path], root: Path) -> str:
    """sha256 over the contents of ``files`` and the names and sizes of ``listed``.

    Annotation files are hashed whole; images and masks only by relative name and size
    (-1 when missing), which catches added, removed and replaced files at the cost of a stat.
    """
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"file {_relative(path, root)}\n".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    for path in listed:
        size = path.stat().st_size if path.is_file() else -1
        digest.update(f"\nlisted {_relative(path, root)} {size}".encode())
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def read_json(path: Path, what: str) -> Any:
    """A JSON file, or an InputError naming the file and what it should be."""
    if not path.is_file():
        raise InputError(f"{what}: {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{what}: cannot read {path}: {exc}") from exc


class FileDataset(Dataset):
    """A file-based dataset with the common options ``prompt`` and ``limit``."""

    default_prompt: ClassVar[str] = ""

    def __init__(self, root: str | Path | None = None, *, prompt: str | None = None,
                 limit: int | None = None, **options: Any) -> None:
        if root is None:
            raise InputError(f"dataset {self.name!r} needs a root folder")
        super().__init__(root, prompt=prompt, limit=limit, **options)
        self.prompt = prompt or self.default_prompt
        self.limit = limit

    def _cut(self, items: list[Any]) -> list[Any]:
        return items if self.limit is None else items[: max(0, int(self.limit))]


class CocoCaption(FileDataset):
    name = "coco-caption"
    summary = ("COCO Caption on the 2014 minival images, in TAM's layout: references from "
               "captions_val2014, masks as label maps of COCO category ids (80 classes).")
    citation = f"{COCO_BIBTEX}\n{TAM_BIBTEX}"
    default_prompt = COCO_PROMPT

    def __init__(self, root: str | Path | None = None, **options: Any) -> None:
        super().__init__(root, **options)
        self.instances = self.root / "annotations" / "instances_minival2014.json"
        self.captions = self.root / "annotations" / "captions_val2014.json"
        self._index: list[tuple[int, list[str]]] | None = None

    def _entries(self) -> list[tuple[int, list[str]]]:
        """(image id, references) in the order of the instances file, read once."""
        if self._index is None:
            images = read_json(self.instances, "COCO instances (image ids)").get("images", [])
            captions = read_json(self.captions, "COCO captions").get("annotations", [])
            references: dict[int, list[str]] = {}
            for caption in captions:
                references.setdefault(int(caption["image_id"]), []).append(
                    str(caption["caption"]).strip())
            self._index = self._cut([(int(image["id"]), references.get(int(image["id"]), []))
                                     for image in images])
        return self._index

    def _paths(self, image_id: int) -> tuple[Path, Path]:
        return (self.root / "image" / f"{image_id:012d}.jpg",
                self.root / "seg_label" / f"{image_id:012d}.png")

    def __iter__(self) -> Iterator[Sample]:
        for image_id, references in self._entries():
            image, mask = self._paths(image_id)
            yield Sample(
                id=str(image_id), image=image, prompt=self.prompt, references=list(references),
                mask=mask, categories=dict(COCO_CATEGORIES),
                meta={"image_id": image_id, "missing_mask": "zeros",
                      "mask_missing": not mask.is_file()},
            )

    def __len__(self) -> int:
        return len(self._entries())

    def fingerprint(self) -> str:
        listed = [p for image_id, _ in self._entries() for p in self._paths(image_id)]
        return file_fingerprint([self.instances, self.captions], listed, self.root)


class _AnnoJson(FileDataset):
    """GranDf and OpenPSG: ``anno.json``, records ``[image, caption, mask, categories]``."""

    def __init__(self, root: str | Path | None = None, **options: Any) -> None:
        super().__init__(root, **options)
        self.anno = self.root / "anno.json"
        self._records: list[Any] | None = None

    def _entries(self) -> list[Any]:
        if self._records is None:
            records = read_json(self.anno, f"{self.name} annotations")
            if not isinstance(records, list):
                raise InputError(f"{self.name} annotations: {self.anno} holds a "
                                 f"{type(records).__name__}, expected a list of records")
            self._records = self._cut(records)
        return self._records

    def __iter__(self) -> Iterator[Sample]:
        for index, record in enumerate(self._entries()):
            yield self._sample(index, record)

    def _sample(self, index: int, record: Any) -> Sample:
        valid = (isinstance(record, (list, tuple)) and len(record) == 4
                 and isinstance(record[0], str) and isinstance(record[3], dict))
        if not valid:
            return Sample(id=str(index), image=self.anno, prompt=self.prompt,
                          meta={"error": f"record {index} of {self.anno} is not "
                                         "[image, caption, mask, categories]"})
        image, caption, mask, categories = record
        meta: dict[str, Any] = {"image_name": image}
        try:
            labels = {str(k): int(v) for k, v in categories.items()}
        except (TypeError, ValueError):
            labels = {}
            meta["mask_error"] = f"record {index} has non-integer category ids: {categories}"
        return Sample(
            id=str(index), image=self.root / image, prompt=self.prompt,
            references=[str(caption)] if caption else [],
            mask=self.root / mask if mask else None, categories=labels, meta=meta,
        )

    def __len__(self) -> int:
        return len(self._entries())

    def fingerprint(self) -> str:
        listed = []
        for sample in self:
            listed.append(Path(sample.image))
            if isinstance(sample.mask, Path):
                listed.append(sample.mask)
        return file_fingerprint([self.anno], listed, self.root)


class GranDf(_AnnoJson):
    name = "grandf"
    summary = ("GranDf (GLaMM's grounded captions), in TAM's layout: one description per "
               "image and a label map of the record's phrases.")
    citation = f"{GLAMM_BIBTEX}\n{TAM_BIBTEX}"
    default_prompt = GRANDF_PROMPT


class OpenPSG(_AnnoJson):
    name = "openpsg"
    summary = ("OpenPSG validation images, in TAM's layout: one description per image and a "
               "label map of the record's panoptic categories.")
    citation = f"{OPENPSG_BIBTEX}\n{GLAMM_BIBTEX}\n{TAM_BIBTEX}"
    default_prompt = OPENPSG_PROMPT


@hookimpl
def register_datasets(register):
    register(CocoCaption)
    register(GranDf)
    register(OpenPSG)
