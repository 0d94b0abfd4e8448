"""One picture per benchmark: every method's map of one word, for three scenes.

For each scene of the bundled split (the first three by default) the model captions the
image once; every registered method explains the caption's first shape word (the first
named object's, e.g. ``circle`` in ``a red circle ...``), and the figure shows, per row, the
scene with its object's outline and each method's map over it (JET, each map scaled to its
own range, as ``mmxai explain`` draws them). The maps are the ones the benchmark scores.

Run: ``python benchmarks/map_pictures.py --dataset synthetic16 --out docs/img/maps16.png``
(a minute or two on CPU).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mmxai.api import explain_many, open_pretrained
from mmxai.dataset import load_image, load_mask
from mmxai.maps import to_image
from mmxai.registry import manager
from mmxai.viewer import normalise, overlay
from mmxai.words import token_pieces

CELL = 160  # pixels per panel
LABEL = 14  # pixels of text above each panel


def first_shape_word(pieces: list[str], labels: dict[str, int]) -> tuple[int, int]:
    """(token index, label) of the first labelled word after its colour word."""
    words = [p.strip() for p in pieces]
    for i, word in enumerate(words[1:], start=1):
        if word in labels and words[i - 1] in labels and labels[word] == labels[words[i - 1]]:
            return i, labels[word]
    raise ValueError(f"no named object in {' '.join(words)!r}")


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean mask."""
    inner = mask.copy()
    inner[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                         & mask[1:-1, :-2] & mask[1:-1, 2:])
    return mask & ~inner


def panel(image: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (CELL, CELL + LABEL), "white")
    out.paste(image.resize((CELL, CELL), Image.Resampling.NEAREST), (0, LABEL))
    ImageDraw.Draw(out).text((2, 1), text, fill="black")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic16")
    parser.add_argument("--scenes", default="0,1,2", help="indices into the split")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    dataset = manager().get("datasets", args.dataset)()
    model = open_pretrained(dataset.default_model)
    methods = sorted(name for name, cls in manager().items("methods").items()
                     if cls.__module__.startswith("mmxai."))  # the built-ins, no plugin's
    samples = list(dataset)
    rows = []
    for index in (int(i) for i in args.scenes.split(",")):
        sample = samples[index]
        image = load_image(sample)
        mask = load_mask(sample, image.size)
        results = explain_many(model, [image], sample.prompt, methods, max_new_tokens=32)
        trace = next(iter(results.values())).trace
        pieces, _ = token_pieces(model.tokenizer, trace.generated_ids.tolist())
        token, label = first_shape_word(pieces, sample.word_labels or {})
        shown = np.asarray(image).copy()
        shown[outline(mask == label)] = (255, 255, 255)
        cells = [panel(Image.fromarray(shown), f"'{pieces[token].strip()}'")]
        for name in methods:
            flat = results[name].maps[token]
            heat = normalise(to_image(flat, trace.grids, 0, (image.height, image.width)))
            cells.append(panel(overlay(image, heat), name))
        row = Image.new("RGB", (CELL * len(cells), CELL + LABEL), "white")
        for k, cell in enumerate(cells):
            row.paste(cell, (k * CELL, 0))
        rows.append(row)
    figure = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    for k, row in enumerate(rows):
        figure.paste(row, (0, k * row.height))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours keep the figure a few hundred KB for the docs
    figure.quantize(256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({figure.width}x{figure.height})")


if __name__ == "__main__":
    main()
