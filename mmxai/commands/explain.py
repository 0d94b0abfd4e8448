"""``mmxai explain MODEL IMAGE...``: one map per generated token, as PNGs, HTML and npz.

Writes into ``--out``:

- ``<method>/<index>_<token>.png``: the map of each generated token over the image, captioned
  with the method, the token and a colour bar of the map's values (``<method>/image<k>/...``
  when several images are given);
- ``index.html`` (``image<k>.html`` per image, plus an index, for several images): the
  answer as clickable tokens, spaced as the tokenizer spaces its words; for the chosen token
  every method's map side by side, for the chosen method every token's; TAM's text half;
  self-contained, works offline (:func:`mmxai.viewer.html_page`);
- ``<method>/maps.npz``: the raw flat maps (n_tokens, N_image) with the grid layout, to
  reshape with :mod:`mmxai.maps`;
- ``run.json``: model, prompt, ``--chat-template`` file, answer, methods and options, and
  the methods that failed.

With ``--save-maps DIR``, each method's maps also go to ``DIR/<method>/<sample_id>.npz`` in
the format ``mmxai score`` reads (:mod:`mmxai.saved_maps`; ``--sample-id``, default the
first image's file name without its extension), replacing a file of that name.

Exit codes: 0 when every method gave maps; 2 when the run was refused (bad input, nothing
written) or every method failed; :data:`PARTIAL` (3) when some methods failed (one line
each on stderr) and the others' maps and pages were written.
"""

from __future__ import annotations

import argparse
import json
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from mmxai import hub, viewer
from mmxai.api import (
    MAX_NEW_TOKENS,
    Explanation,
    check_prompt,
    explain_many,
    failure_message,
    load_image,
    make_method,
)
from mmxai.cli import error
from mmxai.commands.common import (
    TINY,
    chat_template_option,
    check_max_new_tokens,
    note,
    open_model,
    parse_dtype,
    parse_options,
    resolve_device,
)
from mmxai.commands.tiny import folder_argument, shown, writable_folder
from mmxai.errors import InputError
from mmxai.method import Method, default_methods
from mmxai.saved_maps import maps_path, save_trace_maps

DEFAULT_METHOD = "tam"
#: Exit code when some methods failed and the others' outputs were written.
PARTIAL = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="hub name (e.g. Qwen/Qwen2-VL-2B-Instruct), local folder "
                                      "or tiny:<family>")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image file(s); several go into one prompt, images first")
    parser.add_argument("--prompt", default="Describe the image.",
                        help="the user prompt (default: %(default)r)")
    parser.add_argument("--method", dest="methods", action="extend", nargs="+", metavar="NAME",
                        help=f"attribution method(s), repeatable or comma-separated "
                             f"(default: {DEFAULT_METHOD}; all: every registered one; see "
                             f"`mmxai plugins`)")
    parser.add_argument("--max-new-tokens", type=int, default=32, metavar="N",
                        help=f"length of the greedy answer, 1 to {MAX_NEW_TOKENS} "
                             f"(default: %(default)s)")
    parser.add_argument("--out", type=folder_argument, default=Path("mmxai-out"), metavar="DIR",
                        help="output folder: PNGs, maps.npz, run.json and the viewer "
                             "index.html (default: %(default)s)")
    parser.add_argument("--option", dest="options", action="append", default=[],
                        metavar="METHOD.KEY=VALUE",
                        help="a method option, e.g. tam.eci=false (repeatable; default: "
                             "each method's defaults, see docs/plugins.md)")
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (cuda when available, else cpu), cpu, "
                             "cuda, cuda:N, mps or xpu (default: %(default)s)")
    parser.add_argument("--dtype", default="auto",
                        help="model dtype: auto (the checkpoint's), float32, bfloat16, "
                             "float16 or float64 (default: %(default)s)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the checkpoint's own Python code to run (default: off)")
    parser.add_argument("--chat-template", type=Path, metavar="FILE",
                        help="a Jinja chat template (UTF-8 file) to use instead of the "
                             "checkpoint's, or of the family's default when it has none "
                             "(default: the checkpoint's)")
    parser.add_argument("--save-maps", type=folder_argument, metavar="DIR",
                        help="also write each method's maps to DIR/<method>/<sample_id>.npz, "
                             "for `mmxai score` and other tools (default: not written)")
    parser.add_argument("--sample-id", metavar="ID",
                        help="the sample id --save-maps names the file after (default: the "
                             "first image's file name without its extension)")


def method_folders(names: list[str]) -> dict[str, str]:
    """Each method's output folder name: :func:`viewer.safe_filename`, with ``-2``, ``-3``
    ... when two names would give the same folder (``a<b`` and ``a>b``): nothing is
    overwritten."""
    folders: dict[str, str] = {}
    for name in names:
        base = folder = viewer.safe_filename(name)
        n = 1
        while folder.lower() in {f.lower() for f in folders.values()}:  # case-blind file systems
            n += 1
            folder = f"{base}-{n}"
        folders[name] = folder
    return folders


def _check_targets(out: Path, folders: dict[str, str], n_images: int) -> None:
    """What the run will write must not be blocked by a file or folder already in ``out``."""
    pages = ["index.html"] + ([f"image{k}.html" for k in range(n_images)] if n_images > 1 else [])
    for name in [*pages, "run.json"]:
        if (out / name).is_dir():
            raise InputError(f"--out {str(out)!r}: {name} is a folder there; the run writes "
                             f"a file of that name")
    for folder in folders.values():
        if (out / folder).exists() and not (out / folder).is_dir():
            raise InputError(f"--out {str(out)!r}: {folder} is a file there; the run writes "
                             f"a folder of that name")


def quiet_generation() -> None:
    """Inside ``warnings.catch_warnings()``: drop the warnings transformers emits while
    generating (``Unfeasible length constraints`` when ``--max-new-tokens`` is below the
    checkpoint's ``generation_config.min_new_tokens``, deprecation notes, ...). They say how
    ``generate`` read its settings, not what went wrong: the answer's length is
    ``--max-new-tokens`` at most, as asked, and a successful run's stderr stays empty. The
    Python API leaves them alone."""
    warnings.filterwarnings("ignore", module=r"transformers(\.|$)")


def run(args: argparse.Namespace) -> int:
    methods = [m.strip() for spec in (args.methods or [DEFAULT_METHOD])
               for m in spec.split(",") if m.strip()]
    methods = default_methods(methods)  # `all`: every registered method
    # Everything the user typed is checked before the (slow) model load.
    check_max_new_tokens(args.max_new_tokens)
    check_prompt(args.prompt, "--prompt")
    device = resolve_device(args.device)
    dtype = parse_dtype(args.dtype)
    options = parse_options(args.options, methods)
    images = [load_image(path) for path in args.images]
    instances = [make_method(name, **options.get(name, {})) for name in methods]
    folders = method_folders([m.name for m in instances])
    writable_folder(args.out, "--out")
    _check_targets(args.out, folders, len(images))
    sample_id = _check_save_maps(args, folders)
    chat_template = chat_template_option(args.chat_template)
    # A mistyped folder or a hub name that cannot be fetched: one line now, not a minute of
    # retries after the progress display started.
    source = None if args.model.startswith(TINY) else hub.resolve(args.model)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    failures: dict[str, BaseException] = {}
    stderr = Console(stderr=True)
    # Off a terminal (a pipe, a log file, a test) rich would still leave a blank line.
    with Progress(*columns, console=stderr, transient=True,
                  disable=not stderr.is_terminal) as progress:
        task = progress.add_task(f"loading {shown(args.model)}", total=2 + 2 * len(instances))
        model = open_model(args.model, device, dtype, args.trust_remote_code, source=source,
                           chat_template=chat_template,
                           say=lambda text: note(text, progress.console))

        def on_step(step: str) -> None:  # a step starts: the one before it is done
            label = "tracing (one generation for all methods)" if step == "trace" else step
            progress.update(task, description=shown(label), advance=1)

        with warnings.catch_warnings():  # see quiet_generation
            quiet_generation()
            explanations = explain_many(model, images, args.prompt, instances,
                                        max_new_tokens=args.max_new_tokens, on_step=on_step,
                                        failures=failures,
                                        image_names=list(map(str, args.images)))
        if explanations:
            try:
                for name, explanation in explanations.items():
                    progress.update(task, description=f"rendering {shown(name)}", advance=1)
                    write_method(explanation, render_overlays(explanation, images), args.out,
                                 folders[name])
                    if sample_id is not None:
                        save_method_maps(explanation, args.save_maps / folders[name],
                                         sample_id)
                progress.update(task, advance=1)
                text = text_relevances(instances, explanations,
                                       say=lambda line: note(line, progress.console))
                pages = write_pages(explanations, images, args.out,
                                    title=f"mmxai: {args.model}",
                                    image_names=list(map(str, args.images)), text=text)
                write_run(explanations, args, failures, folders)
            except OSError as exc:  # disk full, a file appearing in the way, ...
                where = exc.filename if exc.filename is not None else args.out
                raise InputError(f"--out {str(args.out)!r}: cannot write {str(where)!r} "
                                 f"({exc.strerror or exc})") from exc
    for name, exc in failures.items():
        error(failure_message(name, exc))
    if not explanations:
        return 2
    first = next(iter(explanations.values()))
    console = Console(soft_wrap=True)
    console.print(f"[bold]answer:[/] {shown(repr(first.text))}")
    console.print(f"{len(first.tokens)} tokens x {len(explanations)} method(s) x "
                  f"{len(images)} image(s) -> {shown(args.out)}/; open {shown(pages[0])}")
    if sample_id is not None:
        console.print(f"maps for mmxai score -> {shown(args.save_maps)}/<method>/"
                      f"{shown(maps_path('.', sample_id).name)}")
    return PARTIAL if failures else 0


def _check_save_maps(args: argparse.Namespace, folders: dict[str, str]) -> str | None:
    """The sample id ``--save-maps`` files are named after (None without ``--save-maps``),
    its folders checked writable before the model loads."""
    if args.save_maps is None:
        if args.sample_id is not None:
            raise InputError(f"--sample-id {args.sample_id!r}: names the files of --save-maps, "
                             "which is not given")
        return None
    sample_id = args.sample_id if args.sample_id is not None else Path(args.images[0]).stem
    try:
        name = maps_path(args.save_maps, sample_id).name
    except InputError as exc:  # an empty id, or one too long for a file name
        raise InputError(f"--sample-id: {exc}") from exc
    writable_folder(args.save_maps, "--save-maps")
    for folder in folders.values():
        target = args.save_maps / folder
        if target.exists() and not target.is_dir():
            raise InputError(f"--save-maps {str(args.save_maps)!r}: {folder} is a file there; "
                             "the run writes a folder of that name")
        if (target / name).is_dir():
            raise InputError(f"--save-maps {str(args.save_maps)!r}: {folder}/{name} is a "
                             "folder there; the run writes a file of that name")
    return sample_id


def save_method_maps(explanation: Explanation, folder: Path, sample_id: str) -> Path:
    """One method's maps as ``folder/<sample_id>.npz`` (:func:`mmxai.saved_maps.save_maps`):
    the explained tokens each decoded on its own, and the maps over the trace's grids."""
    try:
        return save_trace_maps(folder, sample_id, explanation.trace, explanation.maps,
                               explanation.tokens)
    except OSError as exc:  # disk full, a file appearing in the way, ...
        raise InputError(f"--save-maps {str(folder.parent)!r}: cannot write "
                         f"{str(maps_path(folder, sample_id))!r} ({exc.strerror or exc})"
                         ) from exc


def render_overlays(explanation: Explanation, images: list[Image.Image]) -> list[list[bytes]]:
    """PNG bytes of each explained token's map over each image: ``[image][token]``, each
    captioned with the method, the token and a colour bar of its values
    (:func:`mmxai.viewer.labelled`).

    Sizes follow :func:`mmxai.viewer.fit`, so big photos shrink and tiny images grow.
    """
    rendered = []
    for index, image in enumerate(images):
        shown = image.resize(viewer.fit(image.size), Image.Resampling.BICUBIC)
        size = (shown.height, shown.width)
        pngs = []
        for i, (token, word) in enumerate(zip(explanation.tokens, explanation.words,
                                              strict=True)):
            heat = explanation.image_map(i, image=index, size=size)
            label = f"{explanation.method}: token {token} {json.dumps(word, ensure_ascii=False)}"
            pngs.append(viewer.png_bytes(viewer.labelled(viewer.overlay(shown, heat), label,
                                                         *viewer.value_range(heat))))
        rendered.append(pngs)
    return rendered


def text_relevances(methods: list[Method], explanations: dict[str, Explanation],
                    say: Callable[[str], None]) -> dict[str, np.ndarray]:
    """The text half of each method that has one (``text_relevance(trace, tokens)``, as
    :class:`mmxai.methods.tam.TAM` defines it): method name -> (tokens, tokens), the
    relevance of each explained token (column) to each (row), for the page. A method whose
    text half fails or does not fit is said in one ``say`` line and shown without it."""
    found = {}
    for method in methods:
        compute = getattr(method, "text_relevance", None)
        explanation = explanations.get(method.name)
        if compute is None or explanation is None:
            continue
        tokens, n_generated = explanation.tokens, explanation.trace.n_generated
        try:
            scores = np.asarray(compute(explanation.trace, tokens), dtype=np.float32)
            if scores.shape != (len(tokens), n_generated):
                raise ValueError(f"shape {scores.shape}, expected {(len(tokens), n_generated)}")
            if not (np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()):
                raise ValueError("values outside [0, 1]")
        except Exception as exc:  # a plugin's bug costs its text half, not the page
            say(f"method {method.name!r}: the page shows no text relevances "
                f"({type(exc).__name__}: {' '.join(str(exc).split())})")
            continue
        found[method.name] = scores[:, tokens]
    return found


def write_method(explanation: Explanation, overlays: list[list[bytes]], out: Path,
                 folder_name: str | None = None) -> None:
    """One method's PNGs (one per token and image) and its raw maps as ``maps.npz``, in
    ``out/<folder_name>`` (default: the method's :func:`viewer.safe_filename`)."""
    folder = out / (folder_name or viewer.safe_filename(explanation.method))
    for index, pngs in enumerate(overlays):
        target = folder / f"image{index}" if len(overlays) > 1 else folder
        target.mkdir(parents=True, exist_ok=True)
        for token, word, png in zip(explanation.tokens, explanation.words, pngs, strict=True):
            (target / f"{token:03d}_{viewer.safe_filename(word)}.png").write_bytes(png)
    grids = explanation.trace.grids
    np.savez_compressed(
        folder / "maps.npz",
        maps=explanation.maps,
        tokens=np.asarray(explanation.tokens, dtype=np.int64),
        words=np.asarray(explanation.words, dtype=str),
        generated_ids=explanation.trace.generated_ids.numpy(),
        grid_shapes=np.asarray([g.shape for g in grids], dtype=np.int64).reshape(-1, 2),
        grid_offsets=np.asarray([g.offset for g in grids], dtype=np.int64),
        grid_images=np.asarray([g.image for g in grids], dtype=np.int64),
        grid_frames=np.asarray([g.frame for g in grids], dtype=np.int64),
        grid_boxes=np.asarray([g.box for g in grids], dtype=np.float32).reshape(-1, 4),
    )


def write_pages(explanations: dict[str, Explanation], images: list[Image.Image], out: Path,
                title: str, image_names: list[str] | None = None,
                text: dict[str, np.ndarray] | None = None) -> list[Path]:
    """One self-contained HTML page per image (``index.html`` for a single image,
    :func:`mmxai.viewer.explanation_page`); the first path returned is the one to open.
    ``text``: the text halves (:func:`text_relevances`)."""
    paths = []
    for index, image in enumerate(images):
        path = out / ("index.html" if len(images) == 1 else f"image{index}.html")
        heading = title if len(images) == 1 else f"{title} (image {index})"
        path.write_text(viewer.explanation_page(explanations, image, index, heading, text),
                        encoding="utf-8")
        paths.append(path)
    if len(images) > 1:
        names = image_names or [""] * len(images)
        links = "".join(
            f'<li><a href="{viewer.html_text(p.name)}">image {i}</a>'
            f"{': ' + viewer.html_text(name) if name else ''}</li>"
            for i, (p, name) in enumerate(zip(paths, names, strict=True)))
        (out / "index.html").write_text(
            f'<!DOCTYPE html><meta charset="utf-8"><title>{viewer.html_text(title)}</title>'
            f"<h1>{viewer.html_text(title)}</h1><ul>{links}</ul>", encoding="utf-8")
        paths.insert(0, out / "index.html")
    return paths


def write_run(explanations: dict[str, Explanation], args: argparse.Namespace,
              failures: dict[str, BaseException] | None = None,
              folders: dict[str, str] | None = None) -> None:
    """``run.json``: what was run, what the model answered, where each method's files are,
    and each failed method's error and traceback."""
    first = next(iter(explanations.values()))
    record = {
        "model": args.model,
        "model_class": type(first.trace.model.hf).__name__,
        "images": [str(p) for p in args.images],
        "prompt": args.prompt,
        "chat_template": None if args.chat_template is None else str(args.chat_template),
        "answer": first.text,
        "tokens": first.words,
        "methods": {name: e.options for name, e in explanations.items()},
        "folders": {name: (folders or {}).get(name, viewer.safe_filename(name))
                    for name in explanations},
        "failed": {name: {"error": failure_message(name, exc),
                          "traceback": "".join(traceback.format_exception(exc))}
                   for name, exc in (failures or {}).items()},
    }
    (args.out / "run.json").write_text(json.dumps(record, indent=2, default=str),
                                       encoding="utf-8")
