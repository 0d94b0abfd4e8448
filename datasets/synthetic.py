"""The bundled ground-truth benchmark: synthetic shape scenes with exact masks.

The held-out split (``EVAL_SIZE`` scenes of the stream ``EVAL_SEED``, see
:mod:`mmxai.datasets.scenes`) ships in ``datasets/data/synthetic``: ``images/NNNN.png``,
``masks/NNNN.png`` (label maps: 0 background, object k -> k) and ``scenes.jsonl`` (caption,
objects, word labels). ``python -m mmxai.datasets.synthetic --out DIR`` writes it again;
the tests check the shipped files against regeneration.

It is the default benchmark of ``mmxai compare``, with the bundled testbed model
(``plugins/weights/testbed``) trained on other scenes of the same generator.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from mmxai.dataset import Dataset, Sample
from mmxai.datasets.scenes import EVAL_SEED, EVAL_SIZE, PROMPT, Scene, generate_scene
from mmxai.hookspecs import hookimpl

DATA = Path(str(resources.files("mmxai.datasets") / "data" / "synthetic"))
TESTBED = str(resources.files("mmxai.plugins") / "weights" / "testbed")
INDEX = "scenes.jsonl"


def scene_record(scene: Scene) -> dict[str, Any]:
    """The JSON line of one scene (file paths relative to the split's folder)."""
    stem = f"{scene.index:04d}"
    return {
        "id": f"synthetic-{scene.seed}-{stem}",
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


def write_split(directory: str | Path, seed: int = EVAL_SEED, n: int = EVAL_SIZE) -> Path:
    """Write scenes ``(seed, 0..n-1)`` as PNG images, PNG label maps and ``scenes.jsonl``."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "masks").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(n):
        scene = generate_scene(seed, index)
        record = scene_record(scene)
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
    default_benchmark: ClassVar[bool] = True
    default_model: ClassVar[str] = TESTBED
    #: What keeps the default run (every method and metric, 200 scenes) within 3 minutes
    #: on 2 CPU cores, the same for every method (docs/benchmark.md): perturbation curves in
    #: quarters of the pixels rather than eighths, and the costly metrics explain the first
    #: named object's two words (its colour and shape) in each scene.
    default_options: ClassVar[dict[str, dict[str, Any]]] = {
        "deletion": {"steps": 4, "max_tokens": 2},
        "insertion": {"steps": 4, "max_tokens": 2},
        "randomisation": {"max_tokens": 2},
    }

    def __init__(self, root: str | Path | None = None, limit: int | None = None,
                 **options: Any) -> None:
        super().__init__(root if root is not None else DATA, **options)
        self.limit = limit

    def records(self) -> list[dict[str, Any]]:
        lines = (self.root / INDEX).read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        return records if self.limit is None else records[:self.limit]

    def __iter__(self) -> Iterator[Sample]:
        for record in self.records():
            mask = np.asarray(Image.open(self.root / record["mask"]))
            yield Sample(
                id=record["id"],
                image=self.root / record["image"],
                prompt=record["prompt"],
                references=[record["caption"]],
                mask=mask,
                categories=dict(record["categories"]),
                word_labels=dict(record["word_labels"]),
                meta={k: record[k] for k in ("seed", "index", "objects", "distractor")},
            )

    def __len__(self) -> int:
        return len(self.records())

    def fingerprint(self) -> str:
        """SHA-256 over the index and every image and mask it names."""
        digest = hashlib.sha256((self.root / INDEX).read_bytes())
        for record in self.records():
            digest.update((self.root / record["image"]).read_bytes())
            digest.update((self.root / record["mask"]).read_bytes())
        return digest.hexdigest()


@hookimpl
def register_datasets(register) -> None:
    register(SyntheticScenes)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a split of the synthetic scenes.")
    parser.add_argument("--out", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("-n", type=int, default=EVAL_SIZE)
    args = parser.parse_args(argv)
    print(write_split(args.out, args.seed, args.n))


if __name__ == "__main__":
    main()
