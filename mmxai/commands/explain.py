"""``mmxai explain MODEL IMAGE...``: one map per generated token, as PNGs, HTML and npz.

Writes into ``--out``:

- ``<method>/<index>_<token>.png``: the map of each generated token over the image, captioned
  with the method, the token and a colour bar of the map's values (``<method>/image<k>/...``
  when several images are given); for a video, ``<index>_<token>_t<NN>.png``, one per
  temporal patch, over the patch's first frame (a clip is alone in its prompt);
- ``index.html`` (``image<k>.html`` per image, plus an index, for several): the
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
    add_device_map_arguments,
    chat_template_option,
    check_max_new_tokens,
    note,
    open_model,
    parse_dtype,
    parse_options,
    resolve_device,
)
from mmxai.commands.explain_output import render_overlays, write_method, write_pages
from mmxai.commands.tiny import folder_argument, shown, writable_folder
from mmxai.device_map import placement
from mmxai.errors import InputError
from mmxai.method import Method, default_methods
from mmxai.saved_maps import maps_path, save_trace_maps
from mmxai.video import video_argument

DEFAULT_METHOD = "tam"
#: Exit code when some methods failed and the others' outputs were written.
PARTIAL = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="hub name (e.g. Qwen/Qwen2-VL-2B-Instruct), local folder "
                                      "or tiny:<family>")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image file(s); several go into one prompt, images first; or "
                             "one video (.mp4, .webm, .avi, .mov, animated .gif ...): "
                             "docs/video.md")
    parser.add_argument("--video", action="store_true",
                        help="take IMAGE as a video: a folder of frames, or a file of another "
                             "ending (default: by ending and frame count)")
    parser.add_argument("--fps", type=float, metavar="F",
                        help="sample a video at F frames per second (default: the family's, "
                             "2 for Qwen); for a folder of frames: the rate they were taken at")
    parser.add_argument("--frames", type=int, metavar="N",
                        help="sample N evenly spaced frames of a video (default: by --fps)")
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
    add_device_map_arguments(parser)


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
    pages = ["index.html"] + ([f"image{k}.html" for k in range(n_images)]
                              if n_images > 1 else [])
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
    split = placement(args.device_map, args.max_memory, args.device)
    dtype = parse_dtype(args.dtype)
    options = parse_options(args.options, methods)
    video = video_argument(args.images, args.video, args.fps, args.frames)
    images = [] if video else [load_image(path) for path in args.images]
    instances = [make_method(name, **options.get(name, {})) for name in methods]
    folders = method_folders([m.name for m in instances])
    writable_folder(args.out, "--out")
    _check_targets(args.out, folders, len(args.images))
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
                           say=lambda text: note(text, progress.console), **split)

        def on_step(step: str) -> None:  # a step starts: the one before it is done
            label = "tracing (one generation for all methods)" if step == "trace" else step
            progress.update(task, description=shown(label), advance=1)

        with warnings.catch_warnings():  # see quiet_generation
            quiet_generation()
            explanations = explain_many(model, None if video else images, args.prompt,
                                        instances, max_new_tokens=args.max_new_tokens,
                                        on_step=on_step, failures=failures,
                                        image_names=list(map(str, args.images)), video=video)
        if video and explanations:  # a clip's frame 0 stands for it where an image would
            images = next(iter(explanations.values())).trace.inputs.images
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
    clips = first.trace.inputs.clips
    clip = next(iter(clips.values()), None)
    seen = (f"1 clip ({len(clip.indices)} frames, {len(clip.patches)} temporal "
            f"patches)" if clips else f"{len(images)} image(s)")
    console.print(f"{len(first.tokens)} tokens x {len(explanations)} method(s) x {seen} -> "
                  f"{shown(args.out)}/; open {shown(pages[0])}")
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
        # a clip: which source frames the model saw, and which each temporal patch covers
        "video": {str(k): {"source_fps": clip.fps, "source_frames": clip.total_frames,
                           "sampled_frames": [int(i) for i in clip.indices],
                           "temporal_patches": [[int(clip.indices[i]) for i in patch]
                                                for patch in clip.patches]}
                  for k, clip in first.trace.inputs.clips.items()} or None,
        "methods": {name: e.options for name, e in explanations.items()},
        "folders": {name: (folders or {}).get(name, viewer.safe_filename(name))
                    for name in explanations},
        "failed": {name: {"error": failure_message(name, exc),
                          "traceback": "".join(traceback.format_exception(exc))}
                   for name, exc in (failures or {}).items()},
    }
    (args.out / "run.json").write_text(json.dumps(record, indent=2, default=str),
                                       encoding="utf-8")
