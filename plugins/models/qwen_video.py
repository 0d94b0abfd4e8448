"""Qwen2-VL / Qwen2.5-VL video input, without transformers' video processor.

transformers' ``Qwen2VLVideoProcessor`` (like every ``BaseVideoProcessor``) imports
torchvision, which mmxai must not need. Its documented behaviour is replayed here:

- frames are sampled by ``sample_frames``'s rule (:func:`sample_indices`): ``frames`` rounded
  to a multiple of ``temporal_patch_size``, or ``fps`` frames a second clamped to
  ``[min_frames, max_frames]`` and the clip's length, floored to that multiple, picked by
  ``arange(0, total, total / n)[:n]`` (its float32 steps can give one more);
- each frame is smart-resized, rescaled and normalised by the checkpoint's own image
  processor (the frame sizes and mean/std of its video settings), so a clip of two copies
  of an image gives exactly that image's ``pixel_values`` (Qwen takes an image as two
  identical frames);
- the frame count is padded to a multiple of ``temporal_patch_size`` by repeating the last
  frame, and the frames are patchified as the video processor does:
  ``pixel_values_videos`` (t * h * w, C * tps * ps * ps), ``video_grid_thw`` (1, 3);
- the chat's ``<|video_pad|>`` becomes ``t * h * w / merge**2`` tokens, and Qwen2.5-VL gets
  ``second_per_grid_ts = temporal_patch_size / sampled_fps``.

Video settings (frame sizes, ``fps``, ``min_frames``, ``max_frames``) come from where
transformers reads them: ``processor_config.json``'s ``video_processor``, else
``video_preprocessor_config.json``, else the image processor's (a checkpoint saved before
video processors existed loads its video processor from ``preprocessor_config.json``).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from mmxai.errors import InputError, UnsupportedModelError
from mmxai.model import ImageGrid, Inputs
from mmxai.plugins.models.shared import size_value
from mmxai.plugins.models.video_base import VideoInput, sampled_clip
from mmxai.video import Clip, Video, VideoFile

#: Qwen2VLVideoProcessor's defaults, used where a video config leaves a key out.
DEFAULT_FPS = 2.0
DEFAULT_MIN_FRAMES = 4
DEFAULT_MAX_FRAMES = 768
DEFAULT_SIZE = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}
#: Image-processor settings a video config may set differently from the image processor.
PIXEL_KEYS = ("image_mean", "image_std", "rescale_factor", "do_rescale", "do_normalize",
              "do_resize", "resample")


@dataclass(frozen=True)
class VideoSettings:
    """The video processor's settings that decide frames and pixels."""

    shortest_edge: int
    longest_edge: int
    fps: float = DEFAULT_FPS
    min_frames: int = DEFAULT_MIN_FRAMES
    max_frames: int = DEFAULT_MAX_FRAMES
    pixels: tuple[tuple[str, Any], ...] = ()  # PIXEL_KEYS overrides for the image processor

    @classmethod
    def read(cls, config: dict[str, Any] | None, image_processor: Any,
             name: str = "the checkpoint") -> VideoSettings:
        """From a video-processor config dict; None: the image processor's sizes. A size
        without pixel bounds is one line naming ``name`` (the checkpoint) and the size."""
        if config is None:
            size = image_processor.size
            short, long = size_value(size, "shortest_edge"), size_value(size, "longest_edge")
            where = "image processor"
        else:
            size = config.get("size") or DEFAULT_SIZE
            short = config.get("min_pixels") or size_value(size, "shortest_edge")
            long = config.get("max_pixels") or size_value(size, "longest_edge")
            where = "video processor"
        if short is None or long is None:
            raise UnsupportedModelError(
                f"{name}: its {where} size {size_text(size)} has no shortest_edge and "
                "longest_edge (pixel bounds), which Qwen's frames are resized within")
        if config is None:
            return cls(short, long)
        pixels = tuple((k, tuple(v) if isinstance(v, list) else v)
                       for k, v in config.items() if k in PIXEL_KEYS)
        return cls(int(short), int(long), float(config.get("fps") or DEFAULT_FPS),
                   int(config.get("min_frames") or DEFAULT_MIN_FRAMES),
                   int(config.get("max_frames") or DEFAULT_MAX_FRAMES), pixels)


def size_text(size: Any) -> str:
    """A size setting as a config writes it (transformers' SizeDict as the dict it holds)."""
    try:
        return repr(dict(size))
    except (TypeError, ValueError):  # a number or a list: not a dict at all
        return repr(size)


def sample_indices(total: int, video_fps: float | None, settings: VideoSettings,
                   temporal_patch_size: int, fps: float | None = None,
                   frames: int | None = None, what: str = "video") -> torch.Tensor:
    """Qwen's ``sample_frames``: the (n,) source frames to take of ``total``.

    ``frames`` (a count) or ``fps`` (a rate; default ``settings.fps``); a source with no
    rate (``video_fps`` None: a folder of frames) gives all its frames unless ``frames``.
    """
    tps = temporal_patch_size
    if frames is not None:
        n = round(frames / tps) * tps
        if n == 0:
            raise InputError(f"{what}: frames {frames}: the model takes frames in groups of "
                             f"{tps} (temporal_patch_size); ask for {tps} or more")
    elif video_fps is None:
        return torch.arange(total)
    else:
        fps = settings.fps if fps is None else fps
        most = math.floor(min(settings.max_frames, total) / tps) * tps
        n = min(max(total / video_fps * fps, settings.min_frames), most, total)
        n = math.floor(n / tps) * tps
    if frames is not None and n > total:  # by fps, n is at most the clip's length
        if frames > total:
            raise InputError(f"{what}: {frames} frames asked for, but the clip has {total}")
        groups = "in pairs" if tps == 2 else f"in groups of {tps}"
        raise InputError(f"{what}: --frames {frames} rounds up to {n} (Qwen takes frames "
                         f"{groups}), but the clip has {total}")
    # float32 steps can land one past n (24 fps, 367 frames: 31 for 30, the last == total)
    return torch.arange(0, total, total / n).int().long()[:n]


def temporal_patches(n_frames: int, tps: int) -> list[tuple[int, ...]]:
    """The sampled frames each temporal patch covers, the last repeated to fill the last."""
    padded = list(range(n_frames)) + [n_frames - 1] * (-n_frames % tps)
    return [tuple(padded[i:i + tps]) for i in range(0, len(padded), tps)]


def video_pixels(image_processor: Any, frames: list, size: dict[str, int],
                 pixels: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``pixel_values_videos`` (t*h*w, C*tps*ps*ps) and ``video_grid_thw`` (1, 3).

    The frames go through the image processor as images, in one call (smart-resize,
    rescale, normalise each; the same values as one call per frame), which lays out each
    frame's patches as (h*w, C, tps, ps, ps) merge group by merge group with the frame
    repeated over tps; a video's temporal patch holds tps successive frames there instead.
    """
    tps = int(image_processor.temporal_patch_size)
    ps = int(image_processor.patch_size)
    out = image_processor(images=list(frames), size=size, return_tensors="pt", **pixels)
    grids = {tuple(int(v) for v in row) for row in out["image_grid_thw"]}
    if len(grids) != 1:  # open_video checks sizes: a frame that is not its clip's size
        raise InputError(f"video frames of different sizes: patch grids {sorted(grids)}")
    grid = next(iter(grids))
    values = torch.as_tensor(out["pixel_values"]).float()  # (n * h*w, C*tps*ps*ps)
    per_frame = values.reshape(len(frames), grid[1] * grid[2], -1, tps, ps, ps)[:, :, :, 0]
    order = [i for patch in temporal_patches(len(frames), tps) for i in patch]
    stacked = per_frame[order]  # (t*tps, h*w, C, ps, ps)
    t = len(order) // tps
    patches = stacked.reshape(t, tps, *stacked.shape[1:]).permute(0, 2, 3, 1, 4, 5)
    pixel_values = patches.reshape(t * stacked.shape[1], -1)
    return pixel_values, torch.tensor([[t, grid[1], grid[2]]])


class QwenVideo(VideoInput):
    """Video for a :class:`~mmxai.plugins.models.qwen2_vl.QwenLike` adapter (mixed in first):
    one grid per temporal patch."""

    #: Whether the model reads the clip's time step (Qwen2.5-VL's ``second_per_grid_ts``).
    timed_video: ClassVar[bool] = False

    @property
    def video_settings(self) -> VideoSettings:
        return VideoSettings.read(self.video_config, self.processor.image_processor,
                                  self.model_id)

    def build_video_inputs(self, video: Video, prompt: str,
                           source: VideoFile | None = None) -> Inputs:
        """Sample ``video`` by Qwen's rule and build the model's inputs: one grid per
        temporal patch (``kind="video"``, ``frame=t``) and the clip in ``inputs.clips[0]``.
        ``source``: the clip already opened (None: opened here)."""
        settings = self.video_settings
        image_processor = self.processor.image_processor
        tps = int(image_processor.temporal_patch_size)

        def sample(source: VideoFile) -> torch.Tensor:
            return sample_indices(source.total_frames, source.fps, settings, tps,
                                  fps=None if source.fps is None else video.fps,
                                  frames=video.frames, what=f"video {source.name}")

        clip = sampled_clip(video, source, sample, settings.fps,
                            lambda n: temporal_patches(n, tps))
        longest = settings.longest_edge if self.max_pixels is None else self.max_pixels
        size = {"shortest_edge": min(settings.shortest_edge, longest), "longest_edge": longest}
        pixel_values, grid_thw = video_pixels(image_processor, clip.frames, size,
                                              dict(settings.pixels))
        features = self.video_text_features(prompt, clip, grid_thw)
        features["pixel_values_videos"] = pixel_values.to(self.device, self.hf.dtype)
        features["video_grid_thw"] = grid_thw.to(self.device)
        if self.timed_video:
            features["second_per_grid_ts"] = torch.tensor([tps / clip.sampled_fps],
                                                          device=self.device)
        return self.video_inputs(features, prompt, clip, grid_thw)

    def video_text_features(self, prompt: str, clip: Clip, layout: Any) -> dict[str, Any]:
        features = super().video_text_features(prompt, clip, layout)
        if "mm_token_type_ids" in inspect.signature(self.hf.forward).parameters:
            ids = features["input_ids"]  # 1: image, 2: video, as create_mm_token_type_ids
            features["mm_token_type_ids"] = ((ids == self.image_token_id()).long()
                                             + 2 * (ids == self.video_token_id()).long())
        return features

    def n_video_tokens(self, layout: torch.Tensor) -> int:
        """``video_grid_thw`` (1, 3): t * h * w patches, merged m x m."""
        return int(layout.prod()) // self.merge_size ** 2

    def video_grids(self, positions: np.ndarray, layout: torch.Tensor) -> list[ImageGrid]:
        """One (h/m, w/m) grid per temporal patch, each the whole frame."""
        t, h, w = (int(v) for v in layout[0])
        rows, cols = h // self.merge_size, w // self.merge_size
        return [ImageGrid(image=0, positions=positions[k * rows * cols:(k + 1) * rows * cols],
                          shape=(rows, cols), frame=k, kind="video") for k in range(t)]
