"""Video input: reading clips, and what an explained clip carries.

A :class:`Video` is a request: a file (``.mp4``, ``.webm``, ``.avi``, ``.mov`` ... through
PyAV; an animated GIF, WebP, PNG or TIFF through PIL), a folder of frames, or a list of PIL
frames, with the sampling asked for (``fps`` or ``frames``). Which frames are taken is the
model family's rule (Qwen's ``sample_frames``, :mod:`mmxai.plugins.models.qwen_video`), so a
request is opened here (:func:`open_video`: frame count and rate, read before any model
loads) and sampled by the adapter's ``build_video_inputs``, which returns
:class:`~mmxai.model.Inputs` with one :class:`Clip` in ``inputs.clips``.

A folder of frames (or a list of frames) has no time base: its frames are taken as already
sampled, all of them (``frames`` picks that many evenly), at ``fps`` frames per second
(default: the family's sampling rate). An animated image's rate is its mean frame duration
(10 frames a second when it states none, as browsers show such files).

PyAV is an optional extra (``pip install 'mmxai[video]'``); only files that need it ask for
it. Every refusal is one :class:`~mmxai.errors.InputError` line naming the clip.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmxai.errors import InputError, UnsupportedModelError
from mmxai.images import read_image

#: File endings read as video through PyAV.
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".ogv")
#: Formats whose extra frames make a clip (an MPO's second frame is a camera preview: no clip).
ANIMATED_FORMATS = ("GIF", "WEBP", "PNG", "TIFF")
#: Frame files a folder of frames may hold.
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
#: The rate of an animated image that states no frame duration (what browsers play).
UNTIMED_FPS = 10.0
MISSING_PYAV = "reading video files needs PyAV: pip install 'mmxai[video]'"


@dataclass(frozen=True)
class Video:
    """A clip to explain: ``source`` (path to a file or folder of frames, or a list of PIL
    frames) sampled at ``fps`` frames per second or as ``frames`` evenly spaced frames (not
    both; neither: the family's default rate)."""

    source: Any
    fps: float | None = None
    frames: int | None = None

    def __post_init__(self) -> None:
        problem = sampling_problem(self.fps, self.frames)
        if problem is not None:
            raise SamplingError(f"video {self.name}: {problem}", self.fps, self.frames)
        # numpy's and other number types as plain ones: the request is written to JSON
        if self.fps is not None:
            object.__setattr__(self, "fps", float(self.fps))
        if self.frames is not None:
            object.__setattr__(self, "frames", int(self.frames))

    @property
    def name(self) -> str:
        if isinstance(self.source, (str, os.PathLike)):
            return repr(os.fspath(self.source))
        return "<frames>"


class SamplingError(InputError):
    """A :class:`Video`'s ``fps``/``frames`` refused; :meth:`as_flags` says it in the
    command line's words."""

    def __init__(self, message: str, fps: Any, frames: Any) -> None:
        super().__init__(message)
        self.fps, self.frames = fps, frames

    def as_flags(self) -> InputError:
        return InputError(sampling_problem(self.fps, self.frames, "--{}".format))


def sampling_problem(fps: Any, frames: Any, label: Callable[[str], str] = str) -> str | None:
    """What is wrong with a request's ``fps`` and ``frames`` (``label`` names an option),
    or None: one rate above 0 or one whole count of 1 or more, not both."""
    def shown(value: Any) -> str:
        return str(value) if isinstance(value, numbers.Real) else repr(value)

    if fps is not None and frames is not None:
        return (f"{label('fps')} and {label('frames')}: give one, not both ({label('fps')} "
                f"samples by time, {label('frames')} a fixed count)")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, numbers.Real)
                            or not math.isfinite(fps) or fps <= 0):
        return f"{label('fps')} {shown(fps)}: expected a number of frames per second above 0"
    if frames is not None and (isinstance(frames, bool) or not isinstance(
            frames, numbers.Integral) or frames < 1):
        return f"{label('frames')} {shown(frames)}: expected a whole number of frames, 1 or more"
    return None


@dataclass
class Clip:
    """A sampled clip as the model saw it.

    ``frames[i]`` (RGB, original size) is source frame ``indices[i]``, at ``times[i]``
    seconds. ``patches[t]`` lists the sampled frames temporal patch ``t`` covers (Qwen: two
    per patch, the last frame repeated when the count is odd); grid ``t`` of the clip
    (``ImageGrid(kind="video", frame=t)``) is that patch's map.
    """

    frames: list[Image.Image]
    indices: np.ndarray  # (n_frames,) int64 source frame indices
    fps: float  # the source's frames per second
    total_frames: int  # frames in the source
    name: str = ""
    patches: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def times(self) -> np.ndarray:
        """(n_frames,) seconds from the start of the source."""
        return np.asarray(self.indices, dtype=np.float64) / self.fps

    @property
    def sampled_fps(self) -> float:
        """Sampled frames per second of the source (transformers' ``sampled_fps``)."""
        return len(self.indices) / self.total_frames * self.fps


def as_video(value: Any) -> Video:
    """``value`` as a :class:`Video`: one already, a path (file or folder of frames) or a
    list of PIL frames, at the family's default sampling."""
    return value if isinstance(value, Video) else Video(value)


class VideoFile:
    """An opened clip: ``total_frames``, ``fps`` (None: a folder, no time base) and
    :meth:`read` of chosen frames."""

    def __init__(self, name: str, total_frames: int, fps: float | None, reader) -> None:
        self.name, self.total_frames, self.fps, self._reader = name, total_frames, fps, reader

    def read(self, indices: Sequence[int]) -> list[Image.Image]:
        """The frames at ``indices`` (ascending), upright RGB."""
        return self._reader([int(i) for i in indices])


def open_video(video: Video) -> VideoFile:
    """``video``'s source opened and counted, or one line naming it and the cause."""
    source = video.source
    if isinstance(source, (list, tuple)):
        if not source or not all(isinstance(f, Image.Image) for f in source):
            raise InputError("video <frames>: expected a non-empty list of PIL images")
        frames = [read_image(f, f"video frame {i}") for i, f in enumerate(source)]
        return _checked(VideoFile("<frames>", len(frames), None,
                                  lambda idx: [frames[i] for i in idx]), frames)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"video: expected a path or a list of PIL frames, got "
                         f"{type(source).__name__}")
    path = Path(os.fspath(source))
    if path.is_dir():
        return _folder(path, video.name)
    if not path.exists():
        raise InputError(f"video {video.name}: no such file")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return _pyav(path, video.name)
    count = animated_frames(path, f"video {video.name}")
    if count > 1:
        return _animated(path, video.name, count)
    if count == 1:
        raise InputError(f"video {video.name}: a still image (1 frame): explain it as an "
                         "image")
    return _pyav(path, video.name)  # no image PIL knows: a video container, or refused there


def animated_frames(path: Path, what: str | None = None) -> int:
    """How many frames ``path`` holds as an animated GIF/WebP/PNG/TIFF; 1 for another image
    PIL reads (an MPO's preview frame is no clip), 0 if PIL cannot read it. An animation
    whose frames PIL cannot count (a truncated file) is refused, as ``what`` (default: the
    path): PyAV would read the frames before the cut as the whole clip."""
    try:
        image = Image.open(path)
    except Exception:  # not an image: a video container, or nothing readable
        return 0
    with image:
        if image.format not in ANIMATED_FORMATS:
            return 1
        try:
            return int(getattr(image, "n_frames", 1))
        except Exception as exc:
            raise InputError(f"{what or repr(os.fspath(path))}: a {image.format} whose "
                             f"frames cannot be counted (a truncated file?): "
                             f"{' '.join(str(exc).split()) or type(exc).__name__}") from exc


def check_still(image: Image.Image, refuse: Callable[[str], Exception]) -> None:
    """Refuse an animation of several frames given as an image (``refuse(cause)`` makes the
    error line): it is a clip, never silently its frame 0."""
    frames = int(getattr(image, "n_frames", 1) or 1)
    if frames > 1 and image.format in ANIMATED_FORMATS:
        raise refuse(f"has {frames} frames: explain it as a video: mmxai explain MODEL FILE "
                     f"(families: {', '.join(video_families())})")


def is_video_path(path: str | os.PathLike) -> bool:
    """Whether ``mmxai explain`` takes ``path`` as a clip without ``--video``: a video file
    ending, or an animated image of more than one frame."""
    path = Path(os.fspath(path))
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    return path.is_file() and animated_frames(path) > 1


def _checked(clip: VideoFile, samples: list[Image.Image]) -> VideoFile:
    if clip.total_frames < 2:
        raise InputError(f"video {clip.name}: {clip.total_frames} frame(s): a clip needs at "
                         "least 2 (explain a single frame as an image)")
    sizes = {im.size for im in samples}
    if len(sizes) > 1:
        raise InputError(f"video {clip.name}: frames of different sizes "
                         f"({', '.join(f'{w}x{h}' for w, h in sorted(sizes))})")
    return clip


def _natural(name: str) -> list:
    """Sort key: ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _folder(path: Path, name: str) -> VideoFile:
    files = sorted((p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES
                    and p.is_file()), key=lambda p: _natural(p.name))
    if not files:
        raise InputError(f"video {name}: a folder with no frame images "
                         f"({', '.join(FRAME_SUFFIXES)})")

    def read(indices: list[int]) -> list[Image.Image]:
        frames = [read_image(files[i], f"video {name}: frame {files[i].name!r}")
                  for i in indices]
        _checked(clip, frames)
        return frames

    clip = VideoFile(name, len(files), None, read)
    if clip.total_frames < 2:
        return _checked(clip, [])
    return _checked(clip, read([0, len(files) - 1]))


def _animated(path: Path, name: str, count: int) -> VideoFile:
    durations = []
    try:
        with Image.open(path) as image:
            for i in range(count):
                image.seek(i)
                durations.append(float(image.info.get("duration") or 0))
    except Exception as exc:  # a frame PIL counted but cannot reach (a truncated file)
        raise InputError(f"video {name}: cannot read frame {len(durations)}: "
                         f"{' '.join(str(exc).split()) or type(exc).__name__}") from exc
    mean = sum(durations) / len(durations)
    fps = 1000.0 / mean if mean > 0 else UNTIMED_FPS

    def read(indices: list[int]) -> list[Image.Image]:
        frames = []
        try:
            with Image.open(path) as image:
                for i in indices:
                    image.seek(i)
                    # each frame composed as shown (GIF disposal), then the image rules
                    frames.append(read_image(image.convert("RGBA"), f"video {name}: frame {i}"))
        except InputError:
            raise
        except Exception as exc:  # a truncated frame
            raise InputError(f"video {name}: cannot read frame: "
                             f"{' '.join(str(exc).split())}") from exc
        return frames

    return _checked(VideoFile(name, count, fps, read), [])


def _pyav(path: Path, name: str) -> VideoFile:
    try:
        import av
    except ImportError as exc:
        raise InputError(f"video {name}: {MISSING_PYAV}") from exc
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"video {name}: no video stream in the file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            total = int(stream.frames or 0)
            if total <= 0:  # a container that does not say: count by decoding
                total = sum(1 for _ in container.decode(stream))
    except InputError:
        raise
    except Exception as exc:  # av.error.InvalidDataError & co.: not a video it can read
        raise InputError(f"video {name}: cannot read it as a video: "
                         f"{' '.join(str(exc).split()) or type(exc).__name__}") from exc
    if total == 0:
        raise InputError(f"video {name}: an empty clip (no frames decode)")
    fps = float(rate) if rate else None
    if not fps or not math.isfinite(fps):
        raise InputError(f"video {name}: the file states no frame rate")

    def read(indices: list[int]) -> list[Image.Image]:
        wanted, frames = set(indices), {}
        try:
            with av.open(str(path)) as container:
                for i, frame in enumerate(container.decode(container.streams.video[0])):
                    if i in wanted:
                        frames[i] = upright(frame, name)
                    if i >= indices[-1]:
                        break
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"video {name}: cannot decode it: "
                             f"{' '.join(str(exc).split()) or type(exc).__name__}") from exc
        missing = [i for i in indices if i not in frames]
        if missing:
            raise InputError(f"video {name}: the file says {total} frames but frame "
                             f"{missing[0]} does not decode (a truncated file?)")
        return [read_image(frames[i], f"video {name}: frame {i}") for i in indices]

    return _checked(VideoFile(name, total, fps, read), [])


def upright(frame: Any, name: str) -> Image.Image:
    """A decoded PyAV frame as shown: turned by its display matrix (a phone's portrait clip
    is stored landscape), as ffmpeg's autorotate turns it; images are read upright too."""
    # PyAV's rotation is the display matrix's counter-clockwise angle (checked against the
    # QuickTime matrix of a phone's portrait clip: -90, shown turned clockwise); PIL's
    # rotate is counter-clockwise, and exact for multiples of 90.
    image, rotation = frame.to_image(), int(frame.rotation or 0)
    if rotation % 90:
        raise InputError(f"video {name}: a display rotation of {rotation} degrees: only "
                         "multiples of 90 are supported")
    return image.rotate(rotation, expand=True) if rotation % 360 else image


def video_argument(paths: Sequence[str | os.PathLike], as_video: bool, fps: float | None,
                   frames: int | None) -> Video | None:
    """The clip ``mmxai explain`` was given (``--video``, a video file ending, or an animated
    image), or None for images; ``--fps``/``--frames`` checked by :class:`Video`, refused
    in the flags' names."""
    if not (as_video or any(is_video_path(path) for path in paths)):
        if fps is not None or frames is not None:
            raise InputError(f"{'--fps' if fps is not None else '--frames'}: samples a video, "
                             "but the inputs are images")
        return None
    if len(paths) != 1:
        raise InputError(f"a video is explained on its own: got {len(paths)} inputs "
                         f"({', '.join(map(repr, map(str, paths)))})")
    try:
        return Video(os.fspath(paths[0]), fps, frames)
    except SamplingError as exc:
        raise exc.as_flags() from None


def still_images_only(inputs: Any, what: str) -> None:
    """Refuse, in one line, a clip given to what needs still images (``what`` does ...)."""
    if getattr(inputs, "clips", None):
        raise InputError(f"{what}; this sample is a video (docs/video.md)")


def video_families() -> list[str]:
    """Names of the registered model families that take video (``build_video_inputs``)."""
    from mmxai.registry import manager

    return sorted({a.name for a in manager().items("models").values()
                   if hasattr(a, "build_video_inputs")})


def build_video_inputs(model: Any, video: Video, prompt: str,
                       source: VideoFile | None = None):
    """``model``'s inputs for ``video`` and ``prompt`` (one clip in ``inputs.clips``), or one
    line saying that its family takes no video. ``source``: the clip already opened
    (:func:`open_video`), handed on so that it is not read again."""
    build = getattr(model, "build_video_inputs", None)
    if build is None:
        raise UnsupportedModelError(
            f"{model.model_id}: the {model.name or type(model).__name__} adapter takes no "
            f"video; families with video: {', '.join(video_families()) or 'none loaded'}")
    # an adapter written before ``source`` existed takes (video, prompt) and opens it itself
    return build(video, prompt) if source is None else build(video, prompt, source=source)
