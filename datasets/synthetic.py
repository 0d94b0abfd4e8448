"""The bundled ground-truth benchmark: synthetic shape scenes with exact masks.

The held-out split (``EVAL_SIZE`` scenes of the stream ``EVAL_SEED``, see
:mod:`mmxai.testbed.scenes`) ships in ``testbed/data/synthetic``: ``images/NNNN.png``,
``masks/NNNN.png`` (label maps: 0 background, object k -> k) and ``scenes.jsonl`` (caption,
objects, word labels). ``python -m mmxai.datasets.synthetic --out DIR`` writes it again;
the tests check the shipped files against regeneration.

Two benchmarks share the generator: ``synthetic`` (64-px scenes, an 8x8 token grid, the
testbed model ``testbed/weights/testbed``) and ``synthetic16`` (128-px scenes, a 16x16 grid,
``testbed/weights/testbed16``; ``testbed/data/synthetic16``), the default benchmark of
``mmxai compare``. Each model was trained on other scenes of the same generator.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from mmxai.dataset import Dataset, Sample
from mmxai.datasets.tam_formats import MAX_LABEL, json_object, repeated_key
from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl
from mmxai.testbed.scenes import EVAL_SEED, EVAL_SIZE, PROMPT, Scene, generate_scene

DATA = Path(str(resources.files("mmxai.testbed") / "data" / "synthetic"))
TESTBED = str(resources.files("mmxai.testbed") / "weights" / "testbed")
#: The 16x16-grid benchmark (128-px scenes, docs/benchmark.md): its split and its model.
DATA16 = Path(str(resources.files("mmxai.testbed") / "data" / "synthetic16"))
TESTBED16 = str(resources.files("mmxai.testbed") / "weights" / "testbed16")
#: Scenes of the 16x16 split: as many as the default run does in 3 minutes on 2 cores.
EVAL_SIZE_16 = 100
INDEX = "scenes.jsonl"


def scene_record(scene: Scene, prefix: str = "synthetic") -> dict[str, Any]:
    """The JSON line of one scene (file paths relative to the split's folder); ``prefix``
    names the benchmark in the id (``synthetic16`` for the 16x16 one)."""
    stem = f"{scene.index:04d}"
    return {
        "id": f"{prefix}-{scene.seed}-{stem}",
        "seed": scene.seed,
        "index": scene.index,
        "image": f"images/{stem}.png",
        "mask": f"masks/{stem}.png",
        "prompt": PROMPT,
        "caption": scene.caption,
        "word_labels": scene.word_labels(),
        "categories": scene.categories(),
        "distractor": scene.distractor.label if scene.distractor else None,
        "objects": [
            {"label": o.label, "colour": o.colour, "shape": o.shape, "named": o.named,
             "box": list(o.box), "centroid": list(o.centroid)}
            for o in scene.objects
        ],
    }


def write_split(directory: str | Path, seed: int = EVAL_SEED, n: int = EVAL_SIZE,
                geometry: str = "8") -> Path:
    """Write scenes ``(seed, 0..n-1)`` of ``geometry`` (its token grid: "8" or "16") as PNG
    images, PNG label maps and ``scenes.jsonl``."""
    directory = Path(directory)
    prefix = "synthetic" if str(geometry) == "8" else f"synthetic{geometry}"
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "masks").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(n):
        scene = generate_scene(seed, index, str(geometry))
        record = scene_record(scene, prefix)
        Image.fromarray(scene.image).save(directory / record["image"])
        Image.fromarray(scene.mask).save(directory / record["mask"])
        lines.append(json.dumps(record))
    (directory / INDEX).write_text("\n".join(lines) + "\n")
    return directory


class SyntheticScenes(Dataset):
    """Shape scenes whose captions name coloured shapes; every caption word has its mask.

    ``root`` is a folder written by :func:`write_split` (default: the shipped split);
    ``limit`` keeps the first scenes only.
    """

    name: ClassVar[str] = "synthetic"
    summary: ClassVar[str] = (
        "64x64 scenes of 1-3 coloured shapes (plus an unnamed distractor) on noisy "
        "textured backgrounds; exact object masks and a caption whose colour and shape "
        "words each map to one object"
    )
    #: The 16x16 benchmark (:class:`SyntheticScenes16`) is the default; this one stays
    #: available by name (``--dataset synthetic``).
    default_benchmark: ClassVar[bool] = False
    default_model: ClassVar[str] = TESTBED
    #: What keeps the default run (every method and metric, 200 scenes) within 3 minutes
    #: on 2 CPU cores, the same for every method (docs/benchmark.md): perturbation curves in
    #: quarters of the pixels rather than eighths, and the costly metrics explain the first
    #: named object's two words (its colour and shape) in each scene.
    default_options: ClassVar[dict[str, dict[str, Any]]] = {
        "deletion": {"steps": 4, "max_tokens": 2},
        "insertion": {"steps": 4, "max_tokens": 2},
        "randomisation": {"max_tokens": 2},
        # the costly methods (not in the default run; these apply when they are named):
        # about a minute or two each on 100-200 scenes (docs/benchmark.md states them)
        "integrated-gradients": {"steps": 4},
        "ig-smoothgrad": {"steps": 2, "samples": 2},
        "occlusion": {"window": 2, "stride": 2},  # 16 windows of 2x2 tokens
        "feature-ablation": {"cell": 2},
        "eagle": {"regions": "grid", "cell": 4},  # 4 regions: at most 20 passes a token
        # captum's old n_samples default, which docs/benchmark.md's table was measured at
        # (~64 SLIC regions: KernelSHAP's regression underdetermined; the methods' own
        # default is each package's "auto", 2R + 2048 and 1000 passes a sample)
        "kernel-shap": {"samples": 25},
        "lime": {"samples": 25},
    }

    @dataclass
    class Options:
        #: Keep the first N scenes (lines of ``scenes.jsonl``).
        limit: int | None = None

        def __post_init__(self) -> None:
            if self.limit is not None and self.limit < 1:
                raise ValueError(f"limit={self.limit}: expected a whole number >= 1")

    def __init__(self, root: str | Path | None = None, **options: Any) -> None:
        super().__init__(root if root is not None else DATA, **options)
        self.limit: int | None = self.options.limit
        self._lines: list[_Line] | None = None

    def _read(self) -> list[_Line]:
        """The lines of ``scenes.jsonl`` (blank ones aside, ``limit`` applied), each parsed
        and checked; read once. A missing or unreadable index refuses the run in one line; a
        bad line is a sample that fails with its cause."""
        if self._lines is None:
            index = self.root / INDEX
            try:
                data = index.read_bytes()
            except OSError as exc:
                cause = "does not exist" if not index.exists() else (
                    f"cannot be read: {exc.strerror or exc}")
                raise InputError(f"dataset {self.name!r}: {index} {cause}") from exc
            lines = [_parse_line(number, raw) for number, raw
                     in enumerate(data.split(b"\n"), start=1) if raw.strip()]
            if not lines:
                said = "the file is empty" if not data else "it has only blank lines"
                raise InputError(f"dataset {self.name!r}: {index} lists no scene ({said}): "
                                 "there is no sample to run")
            seen: dict[str, int] = {}
            for line in lines:
                if line.record is None:
                    continue
                first = seen.setdefault(line.id, line.number)
                if first != line.number:
                    line.error = f"{INDEX} line {line.number} repeats the id of line {first}"
                    line.id, line.record = f"{INDEX}:{line.number}", None
            self._lines = lines if self.limit is None else lines[:self.limit]
        return self._lines

    def records(self) -> list[dict[str, Any]]:
        """The well-formed records (the broken ones are samples that fail)."""
        return [line.record for line in self._read() if line.record is not None]

    def __iter__(self) -> Iterator[Sample]:
        for line in self._read():
            record = line.record
            if record is None:
                yield Sample(id=line.id, image=self.root / INDEX, prompt=PROMPT,
                             meta={"error": line.error, "line": line.number})
                continue
            mask, mask_error = self._mask(record)
            meta = {k: record[k] for k in ("seed", "index", "objects", "distractor")}
            if mask_error:
                meta["mask_error"] = mask_error
            yield Sample(
                id=record["id"],
                image=self.root / record["image"],
                prompt=record["prompt"],
                references=[record["caption"]],
                mask=mask,
                categories=dict(record["categories"]),
                word_labels=dict(record["word_labels"]),
                meta=meta,
            )

    def _mask(self, record: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
        """The scene's label map, or why it is not one: a missing or unreadable file, not
        a 2-D map of whole numbers, or labels that are none of the scene's objects."""
        path = self.root / record["mask"]
        if not path.is_file():
            return None, f"mask file {path} does not exist"
        try:
            with Image.open(path) as image:
                mask = np.asarray(image)
        except Exception as exc:  # PIL raises several types for truncated or foreign files
            return None, f"cannot read mask {path}: {' '.join(str(exc).split())}"
        if mask.ndim != 2 or mask.dtype.kind not in "iu":
            return None, (f"mask {path} is not a label map: {mask.dtype} pixels of shape "
                          f"{mask.shape}, expected one whole number per pixel")
        labels = {0, *(o["label"] for o in record["objects"])}
        stray = sorted(set(np.unique(mask).tolist()) - labels)
        if stray:
            return None, (f"mask {path} is not this scene's label map: it holds label(s) "
                          f"{', '.join(map(str, stray[:5]))}, the scene's are "
                          f"{', '.join(map(str, sorted(labels)))}")
        return mask, None

    def __len__(self) -> int:
        return len(self._read())

    def fingerprint(self) -> str:
        """SHA-256 over the index and every image and mask it names (a missing or
        unreadable one counts as such)."""
        digest = hashlib.sha256((self.root / INDEX).read_bytes())
        for record in self.records():
            for key in ("image", "mask"):
                try:
                    digest.update((self.root / record[key]).read_bytes())
                except OSError:
                    digest.update(f"\0missing {record[key]}\0".encode())
        return digest.hexdigest()


@dataclass
class _Line:
    """One line of ``scenes.jsonl``: its sample id, its record if well-formed, else why not."""

    number: int
    id: str
    record: dict[str, Any] | None = None
    error: str | None = None


#: What a record must hold for a sample: key -> (what it is, the check).
_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "id": ("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip())),
    "image": ("a path", lambda v: isinstance(v, str) and bool(v.strip())),
    "mask": ("a path", lambda v: isinstance(v, str) and bool(v.strip())),
    "prompt": ("a string", lambda v: isinstance(v, str)),
    "caption": ("a string", lambda v: isinstance(v, str)),
    "word_labels": (f"an object of word -> label (1..{MAX_LABEL})", lambda v: _labels(v)),
    "categories": (f"an object of name -> label (1..{MAX_LABEL})", lambda v: _labels(v)),
    "objects": (f"a list of objects with a 'label' (1..{MAX_LABEL})",
                lambda v: isinstance(v, list) and all(
                    isinstance(o, dict) and _label(o.get("label")) for o in v)),
    "seed": ("a whole number", lambda v: _whole(v)),
    "index": ("a whole number", lambda v: _whole(v)),
    "distractor": (f"a label (1..{MAX_LABEL}) or null", lambda v: v is None or _label(v)),
}


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _label(value: Any) -> bool:
    """A label of a label map: a category id, 1 to MAX_LABEL (0 is the background; maps are
    read as int32)."""
    return _whole(value) and 1 <= value <= MAX_LABEL


def _labels(value: Any) -> bool:
    return isinstance(value, dict) and all(_label(v) for v in value.values())


def _parse_line(number: int, raw: bytes) -> _Line:
    """A line of the index, checked: a bad line keeps its place as ``scenes.jsonl:N``."""
    where = f"{INDEX} line {number}"
    fallback = f"{INDEX}:{number}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Line(number, fallback, error=f"{where} is not UTF-8 text (byte {exc.start} of "
                                              f"the line is 0x{raw[exc.start]:02x})")
    try:
        record = json.loads(text, object_pairs_hook=json_object)
    except ValueError as exc:
        cause = (f"{exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError)
                 else str(exc))
        return _Line(number, fallback, error=f"{where} is not JSON: {cause}")
    except RecursionError:
        return _Line(number, fallback, error=f"{where} nests JSON too deeply to read")
    if not isinstance(record, dict):
        return _Line(number, fallback, error=f"{where} is not a JSON object")
    ident = record.get("id")
    repeated = repeated_key(record)
    sample_id = fallback if repeated_key(record, key="id") or not _FIELDS["id"][1](ident) \
        else ident
    if repeated:  # json keeps the last value; which one was meant cannot be told
        return _Line(number, sample_id, error=f"{where} gives {repeated}")
    missing = [key for key in _FIELDS if key not in record]
    if missing:
        return _Line(number, sample_id, error=f"{where} has no {', '.join(missing)}")
    for key, (expected, check) in _FIELDS.items():
        if not check(record[key]):
            shown = " ".join(json.dumps(record[key], default=str).split())[:40]
            return _Line(number, sample_id, error=f"{where}: {key} is {shown}, expected "
                                                  f"{expected}")
    return _Line(number, sample_id, record=record)


class SyntheticScenes16(SyntheticScenes):
    """The same scenes at 128 px, read by a 16x16 grid of image tokens, as real MLLMs read
    16x16 (Qwen2-VL-2B at 448 px) to 24x24 (LLaVA-1.5); objects span 3-6 token columns."""

    name: ClassVar[str] = "synthetic16"
    default_benchmark: ClassVar[bool] = True
    summary: ClassVar[str] = (
        "128x128 scenes of 1-3 coloured shapes on noisy textured backgrounds, read by a "
        "16x16 grid of image tokens (objects span 3-6 token columns); exact masks")
    default_model: ClassVar[str] = TESTBED16
    #: The region methods' regions in tokens doubled: as many regions as on the 8x8 grid.
    default_options: ClassVar[dict[str, dict[str, Any]]] = {
        **SyntheticScenes.default_options,
        "occlusion": {"window": 4, "stride": 4},
        "feature-ablation": {"cell": 4},
        "eagle": {"regions": "grid", "cell": 8},
    }

    def __init__(self, root: str | Path | None = None, **options: Any) -> None:
        super().__init__(root if root is not None else DATA16, **options)


@hookimpl
def register_datasets(register) -> None:
    register(SyntheticScenes)
    register(SyntheticScenes16)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a split of the synthetic scenes.")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder (default: the shipped split of the geometry)")
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("-n", type=int, default=None,
                        help=f"scenes (default {EVAL_SIZE}; {EVAL_SIZE_16} for --geometry 16)")
    parser.add_argument("--geometry", choices=("8", "16"), default="8",
                        help="the token grid the scenes are made for (default 8)")
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else EVAL_SIZE if args.geometry == "8" else EVAL_SIZE_16
    out = args.out if args.out is not None else DATA if args.geometry == "8" else DATA16
    print(write_split(out, args.seed, n, args.geometry))


if __name__ == "__main__":
    main()
