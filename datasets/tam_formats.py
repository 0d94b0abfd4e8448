"""Readers for the data TAM evaluates on: COCO Caption (minival), GranDf and OpenPSG.

The layouts are those of TAM's formatted release (``docs/evaluation.md``, Datasets):

- ``coco-caption``: ``annotations/instances_minival2014.json`` (only ``images[].id``),
  ``annotations/captions_val2014.json`` (the references), ``image/{id:012d}.jpg`` and
  ``seg_label/{id:012d}.png``, a grayscale label map of COCO category ids. A missing label
  map is an all-zero mask, as in the reference (``meta["mask_missing"]`` records it).
- ``grandf`` / ``openpsg``: ``anno.json``, a list of ``[image, caption, mask, categories]``
  records, paths relative to the folder, the mask a label map of the record's own ids.

Samples are yielded lazily with paths; a missing or broken file is still yielded and only
fails when the evaluator loads it (``mmxai.dataset.load_image`` / ``load_mask``). A broken
record is yielded too, with ``meta["error"]`` (or ``meta["mask_error"]`` when only its ground
truth is wrong); a file that cannot be read as a whole is one ``InputError`` before the run.
``docs/evaluation.md`` (Datasets, Hostile input) lists every case.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mmxai.citations import cite
from mmxai.dataset import Dataset, Sample
from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl
from mmxai.words import COCO_CATEGORIES

COCO_PROMPT = "Write a one-sentence caption for this image:"
GRANDF_PROMPT = "Write a description for this image using around two sentences:"
OPENPSG_PROMPT = "Write a description for this image using around three sentences:"






def file_fingerprint(files: Iterable[Path], listed: Iterable[Path], root: Path) -> str:
    """sha256 over the contents of ``files`` and the names and sizes of ``listed``.

    Annotation files are hashed whole; images and masks only by relative name and size
    (-1 when missing or unreadable), which catches added, removed and replaced files at the
    cost of a stat.
    """
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"file {_relative(path, root)}\n".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    for path in listed:
        try:
            size = path.stat().st_size if path.is_file() else -1
        except OSError:
            size = -1
        digest.update(f"\nlisted {_relative(path, root)} {size}".encode("utf-8",
                                                                         "surrogateescape"))
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# -- reading annotation files honestly ---------------------------------------------------------
#: A character that ``surrogateescape`` made of a byte that is not UTF-8 (or a lone surrogate
#: written as a JSON escape): text that is not valid UTF-8.
_NOT_UTF8 = re.compile("[\ud800-\udfff]")


#: The largest label: label maps are read as int32 (``mmxai.images.read_label_map``).
MAX_LABEL = 2**31 - 1


class Repeats(dict):
    """A JSON object that gives a key more than once (``{"dog": 18, "dog": 1}``).

    Python's ``json`` keeps the last value without a word; :func:`read_json` keeps it too, but
    in this marked dict, so that a reader never uses such an object by guessing which value
    was meant: ``repeats`` lists each repeated key with its values, in file order.
    """

    repeats: list[tuple[str, list[Any]]]


def json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads``: a dict, or a :class:`Repeats` when a key
    comes twice."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    values: dict[str, list[Any]] = {}
    for key, value in pairs:
        values.setdefault(key, []).append(value)
    marked = Repeats(obj)
    marked.repeats = [(key, found) for key, found in values.items() if len(found) > 1]
    return marked


def repeated_key(value: Any, *, deep: bool = True, key: str | None = None) -> str | None:
    """A key that some JSON object in ``value`` gives twice, said for an error line (``the
    key 'dog' twice (18 and 1)``), or None. ``deep``: search the objects and lists inside
    ``value`` too (a record), else only ``value`` itself (a file's top level); ``key``: only
    that key of ``value`` itself."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Repeats):
            for name, found in item.repeats:
                if key is None or name == key:
                    times = "twice" if len(found) == 2 else f"{len(found)} times"
                    return (f"the key {show_bytes(name)} {times} "
                            f"({' and '.join(show(v) for v in found)})")
        if not deep or key is not None:
            break
        if isinstance(item, dict):
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))
    return None


def bad_label(value: int) -> str | None:
    """Why the whole number ``value`` cannot be a label, or None: labels are category ids,
    1 to :data:`MAX_LABEL`. 0 is the background of every label map (TAM's reference also
    marks a word without a category -1), and the maps are read as 32-bit integers."""
    if 1 <= value <= MAX_LABEL:
        return None
    return (f"outside 1..{MAX_LABEL} (labels are category ids: 0 is the background of a "
            "label map, and label maps are read as 32-bit integers)")


def read_json(path: Path, what: str, *, per_record_encoding: bool = False) -> Any:
    """A JSON file, or an InputError naming the file, what it should be and where it breaks.

    The file must be UTF-8 (a leading byte-order mark is allowed). With
    ``per_record_encoding`` a byte that is not UTF-8 inside a JSON string does not condemn
    the file: it is kept as a surrogate (``surrogateescape``) and the reader reports it on
    the record that holds it (:func:`not_utf8`); bytes that break the JSON itself still
    refuse the file, with the byte offset.

    An object that gives a key twice is read as a :class:`Repeats`: with
    ``per_record_encoding`` the reader judges it where it is (the record that holds it
    fails; :func:`repeated_key`); otherwise (a small table every sample shares) the file is
    refused, naming the key.
    """
    if not path.is_file():
        raise InputError(f"{what}: {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{what}: cannot read {path}: {exc.strerror or exc}") from exc
    first_bad = None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not per_record_encoding:
            raise InputError(f"{what}: {path} is not UTF-8 text: byte {exc.start} is "
                             f"0x{data[exc.start]:02x}") from exc
        first_bad = exc.start
        text = data.decode("utf-8", "surrogateescape")
    start = 1 if text.startswith("\ufeff") else 0
    try:
        value = json.loads(text[start:], object_pairs_hook=json_object)
    except ValueError as exc:
        pos = start + getattr(exc, "pos", 0)
        offset = len(text[:pos].encode("utf-8", "surrogateescape"))
        where = (f" at byte {offset} (line {exc.lineno}, column {exc.colno})"
                 if isinstance(exc, json.JSONDecodeError) else "")
        cause = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        also = (f"; it is not UTF-8 text either (byte {first_bad} is "
                f"0x{data[first_bad]:02x})" if first_bad is not None else "")
        raise InputError(f"{what}: {path} is not valid JSON{where}: {cause}{also}") from exc
    except RecursionError as exc:
        raise InputError(f"{what}: {path} nests JSON too deeply to read") from exc
    # A table every sample shares is refused for a key given twice anywhere; a per-record
    # file only for its own top-level keys ('images' twice), records being judged one by one.
    repeated = repeated_key(value, deep=not per_record_encoding)
    if repeated:
        raise InputError(f"{what}: {path} gives {repeated} in one object: which is meant "
                         "cannot be told")
    return value


def not_utf8(text: str) -> bool:
    """Whether ``text`` (from :func:`read_json`) holds bytes that are not UTF-8."""
    return _NOT_UTF8.search(text) is not None


def show_bytes(text: str, limit: int = 60) -> str:
    """``text`` as the bytes it came from, the bad ones as ``\\xNN``, cut at ``limit``."""
    raw = repr(text.encode("utf-8", "surrogateescape"))[2:-1]
    return "'" + raw[:limit] + ("..." if len(raw) > limit else "") + "'"


def show(value: Any, limit: int = 40) -> str:
    """A value from a JSON file, short, for a one-line error."""
    text = " ".join(json.dumps(value, ensure_ascii=False, default=str).split())
    try:  # bytes that were not UTF-8 (surrogateescape) shown as \xNN
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate written as a JSON escape
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:limit] + ("..." if len(text) > limit else "")


def is_whole(value: Any) -> bool:
    """A JSON integer (not a boolean, not ``2.0``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def kind(value: Any) -> str:
    """The JSON name of a value's type, for errors."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# -- the readers -------------------------------------------------------------------------------
class FileDataset(Dataset):
    """A file-based dataset with the common options ``prompt`` and ``limit``."""

    @dataclass
    class Options:
        #: The question asked about every image (default: the dataset's own).
        prompt: str | None = None
        #: Keep the first N samples, in the dataset's order.
        limit: int | None = None

        def __post_init__(self) -> None:
            if self.prompt is not None and not self.prompt.strip():
                raise ValueError("prompt is empty; leave it out to ask the dataset's "
                                 "default question")
            if self.limit is not None and self.limit < 1:
                raise ValueError(f"limit={self.limit}: expected a whole number >= 1")

    default_prompt: ClassVar[str] = ""

    def __init__(self, root: str | Path | None = None, **options: Any) -> None:
        if root is None:
            raise InputError(f"dataset {self.name!r} needs a root folder")
        super().__init__(root, **options)
        self.prompt: str = self.options.prompt or self.default_prompt
        self.limit: int | None = self.options.limit

    def _cut(self, items: list[Any]) -> list[Any]:
        return items if self.limit is None else items[: self.limit]


@dataclass
class _Entry:
    """One sample of COCO Caption: its id, its image id (None when the record is broken),
    its references and what is wrong with it."""

    id: str
    image_id: int | None
    references: list[str] = field(default_factory=list)
    error: str | None = None

    def fail(self, error: str) -> None:
        self.error = self.error or error  # the first problem names the sample's failure


class CocoCaption(FileDataset):
    name = "coco-caption"
    summary = ("COCO Caption on the 2014 minival images, in TAM's layout: references from "
               "captions_val2014, masks as label maps of COCO category ids (80 classes).")
    citation = cite("lin2014coco", "chen2015cococaptions", "li2025tam")
    default_prompt = COCO_PROMPT

    def __init__(self, root: str | Path | None = None, **options: Any) -> None:
        super().__init__(root, **options)
        self.instances = self.root / "annotations" / "instances_minival2014.json"
        self.captions = self.root / "annotations" / "captions_val2014.json"
        self._index: list[_Entry] | None = None

    def _entries(self) -> list[_Entry]:
        """The samples in the order of the instances file (after ``limit``), read once."""
        if self._index is None:
            entries = self._cut(self._images())
            self._references({e.image_id: e for e in entries if e.image_id is not None})
            self._index = entries
        return self._index

    def _images(self) -> list[_Entry]:
        """One entry per ``images[]`` record; a broken record is a failed sample named by
        its place in the file (``images[3]``), which no integer id can collide with."""
        what = "COCO instances (image ids)"
        data = read_json(self.instances, what, per_record_encoding=True)
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            found = (f"its 'images' is {kind(images)}" if isinstance(data, dict) and
                     "images" in data else "it has no 'images'" if isinstance(data, dict)
                     else f"it holds {kind(data)}")
            raise InputError(f"{what}: {self.instances} must be a JSON object whose 'images' "
                             f"is a list of {{'id': integer, ...}}; {found}")
        if not images:
            raise InputError(f"dataset 'coco-caption': {self.instances} lists no image (its "
                             "'images' is empty): there is no sample to run")
        entries, first = [], {}
        for i, record in enumerate(images):
            where = f"{self.instances.name} images[{i}]"
            image_id = record.get("id") if isinstance(record, dict) else None
            repeated = repeated_key(record)
            if not isinstance(record, dict):
                error = f"{where} is {kind(record)}, expected an object with an 'id'"
            elif repeated:
                error = f"{where} gives {repeated}"
            elif "id" not in record:
                error = f"{where} has no 'id'"
            elif not is_whole(image_id) or image_id < 0:
                error = f"{where} has id {show(image_id)}, expected a whole number >= 0"
            elif image_id in first:
                error = f"{where} repeats image id {image_id} of images[{first[image_id]}]"
            else:
                first[image_id] = i
                entries.append(_Entry(str(image_id), image_id))
                continue
            entries.append(_Entry(f"images[{i}]", None, error=error))
        return entries

    def _references(self, wanted: dict[int, _Entry]) -> None:
        """Attach the captions of the ``wanted`` images. A caption record of a wanted image
        that is broken (no caption, not a string, bytes that are not UTF-8, a key given
        twice) fails that sample; the records of other images are not read further (the
        captions file covers all of val2014); a record that does not say which image it
        describes refuses the file, since any sample may be the one missing a reference.

        A record listed twice (the same ``id``, ``image_id`` and caption; or, both without
        an ``id``, the same ``image_id`` and caption) is one annotation, hence one
        reference. Records that differ in any of these are distinct references: two
        annotators may write the same sentence (different ids), and a file may reuse an id
        for two captions (the records still say two different things, and neither is
        dropped). An image with no caption record has ``references == []``: nothing is
        read wrongly, and no metric of mmxai scores references (the localisation metrics
        read the mask)."""
        what = "COCO captions"
        data = read_json(self.captions, what, per_record_encoding=True)
        annotations = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(annotations, list):
            found = (f"its 'annotations' is {kind(annotations)}" if isinstance(data, dict)
                     and "annotations" in data else "it has no 'annotations'"
                     if isinstance(data, dict) else f"it holds {kind(data)}")
            raise InputError(f"{what}: {self.captions} must be a JSON object whose "
                             f"'annotations' is a list of {{'image_id', 'caption'}}; {found}")
        seen: dict[int, set[tuple[str | None, str]]] = {}  # image id -> (id, caption) read
        for j, record in enumerate(annotations):
            where = f"{self.captions.name} annotations[{j}]"
            image_id = record.get("image_id") if isinstance(record, dict) else None
            if repeated_key(record, key="image_id"):
                raise InputError(f"{what}: {where} gives {repeated_key(record, key='image_id')}"
                                 "; cannot tell which image it describes")
            if not is_whole(image_id):
                said = ("is " + kind(record) if not isinstance(record, dict) else
                        "has no 'image_id'" if "image_id" not in record else
                        f"has image_id {show(image_id)}, not an integer")
                raise InputError(f"{what}: {where} {said}; cannot tell which image it "
                                 "describes")
            entry = wanted.get(image_id)
            if entry is None:
                continue
            caption = record.get("caption")
            repeated = repeated_key(record)
            if repeated:
                entry.fail(f"{where} (a reference of image {image_id}) gives {repeated}")
            elif "caption" not in record:
                entry.fail(f"{where} (a reference of image {image_id}) has no 'caption'")
            elif not isinstance(caption, str):
                entry.fail(f"{where} (a reference of image {image_id}): caption is "
                           f"{kind(caption)} {show(caption)}, expected a string")
            elif not_utf8(caption):
                entry.fail(f"{where} (a reference of image {image_id}): caption is not "
                           f"UTF-8 text: {show_bytes(caption)}")
            else:
                # the same annotation listed again (same id, image and caption) is one
                key = (json.dumps(record["id"]) if "id" in record else None, caption)
                if key not in seen.setdefault(image_id, set()):
                    seen[image_id].add(key)
                    entry.references.append(caption.strip())

    def _paths(self, image_id: int) -> tuple[Path, Path]:
        return (self.root / "image" / f"{image_id:012d}.jpg",
                self.root / "seg_label" / f"{image_id:012d}.png")

    def __iter__(self) -> Iterator[Sample]:
        for entry in self._entries():
            if entry.image_id is None:
                yield Sample(id=entry.id, image=self.instances, prompt=self.prompt,
                             meta={"error": entry.error})
                continue
            image, mask = self._paths(entry.image_id)
            meta: dict[str, Any] = {"image_id": entry.image_id, "missing_mask": "zeros",
                                    "mask_missing": not mask.is_file()}
            if entry.error:
                meta["error"] = entry.error
            yield Sample(
                id=entry.id, image=image, prompt=self.prompt,
                references=list(entry.references), mask=mask,
                categories=dict(COCO_CATEGORIES), meta=meta,
            )

    def __len__(self) -> int:
        return len(self._entries())

    def fingerprint(self) -> str:
        listed = [p for e in self._entries() if e.image_id is not None
                  for p in self._paths(e.image_id)]
        return file_fingerprint([self.instances, self.captions], listed, self.root)


class _AnnoJson(FileDataset):
    """GranDf and OpenPSG: ``anno.json``, records ``[image, caption, mask, categories]``."""

    def __init__(self, root: str | Path | None = None, **options: Any) -> None:
        super().__init__(root, **options)
        self.anno = self.root / "anno.json"
        self._records: list[Any] | None = None

    def _entries(self) -> list[Any]:
        if self._records is None:
            records = read_json(self.anno, f"{self.name} annotations",
                                per_record_encoding=True)
            if not isinstance(records, list):
                raise InputError(f"{self.name} annotations: {self.anno} holds "
                                 f"{kind(records)}, expected a list of records")
            if not records:
                raise InputError(f"dataset {self.name!r}: {self.anno} lists no record (an "
                                 "empty list): there is no sample to run")
            self._records = self._cut(records)
        return self._records

    def __iter__(self) -> Iterator[Sample]:
        for index, record in enumerate(self._entries()):
            yield self._sample(index, record)

    def _sample(self, index: int, record: Any) -> Sample:
        valid = (isinstance(record, (list, tuple)) and len(record) == 4
                 and isinstance(record[0], str) and record[0]
                 and isinstance(record[3], dict))
        if not valid:
            return self._broken(index, f"record {index} of {self.anno} is not "
                                       "[image, caption, mask, categories]")
        image, caption, mask, categories = record
        where = f"record {index} of {self.anno.name}"
        if not isinstance(caption, str):
            return self._broken(index, f"{where}: caption is {kind(caption)} "
                                       f"{show(caption)}, expected a string")
        if not_utf8(caption):
            return self._broken(index, f"{where}: caption is not UTF-8 text: "
                                       f"{show_bytes(caption)}")
        if mask is not None and not isinstance(mask, str):
            return self._broken(index, f"{where}: mask is {kind(mask)} {show(mask)}, "
                                       "expected a path or null")
        meta: dict[str, Any] = {"image_name": image}
        labels: dict[str, int] = {}
        repeated = repeated_key(categories, deep=False)
        bad = [(k, v) for k, v in categories.items()
               if not is_whole(v) or not_utf8(k) or bad_label(v)]
        if repeated:
            meta["mask_error"] = f"{where}: categories give {repeated}"
        elif bad:
            name, value = bad[0]
            meta["mask_error"] = (
                f"{where}: category {show_bytes(name)} is not UTF-8 text" if not_utf8(name)
                else f"{where}: category {name!r} has label {show(value)}, expected a "
                     "whole number (its value in the mask)" if not is_whole(value)
                else f"{where}: category {name!r} has label {show(value)}, "
                     f"{bad_label(value)}")
        else:
            labels = dict(categories)
        return Sample(
            id=str(index), image=self.root / image, prompt=self.prompt,
            references=[caption] if caption else [],
            mask=self.root / mask if mask else None, categories=labels, meta=meta,
        )

    def _broken(self, index: int, error: str) -> Sample:
        return Sample(id=str(index), image=self.anno, prompt=self.prompt,
                      meta={"error": error})

    def __len__(self) -> int:
        return len(self._entries())

    def fingerprint(self) -> str:
        listed = []
        for sample in self:
            if sample.meta.get("error"):
                continue
            listed.append(Path(sample.image))
            if isinstance(sample.mask, Path):
                listed.append(sample.mask)
        return file_fingerprint([self.anno], listed, self.root)


class GranDf(_AnnoJson):
    name = "grandf"
    summary = ("GranDf (GLaMM's grounded captions), in TAM's layout: one description per "
               "image and a label map of the record's phrases.")
    citation = cite("rasheed2024glamm", "li2025tam")
    default_prompt = GRANDF_PROMPT


class OpenPSG(_AnnoJson):
    name = "openpsg"
    summary = ("OpenPSG validation images, in TAM's layout: one description per image and a "
               "label map of the record's panoptic categories.")
    citation = cite("zhou2024openpsg", "rasheed2024glamm", "li2025tam")
    default_prompt = OPENPSG_PROMPT


@hookimpl
def register_datasets(register):
    register(CocoCaption)
    register(GranDf)
    register(OpenPSG)
