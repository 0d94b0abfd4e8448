"""Qwen2-VL / Qwen2.5-VL video input, without transformers' video processor.

transformers' ``Qwen2VLVideoProcessor`` (like every ``BaseVideoProcessor``) imports
torchvision, which mmxai must not need. Its documented behaviour is replayed here:

- frames are sampled by ``sample_frames``'s rule (:func:`sample_indices`): ``frames`` rounded
  to a multiple of ``temporal_patch_size``, or ``fps`` frames a second clamped to
  ``[min_frames, max_frames]`` and the clip's length, floored to that multiple, picked by
  ``arange(0, total, total / n)``;
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

from mmxai.errors import InputError
from mmxai.model import ImageGrid, Inputs, stack_grids
from mmxai.plugins.models.shared import (
    checkpoint_video_config,
    size_value,
    token_positions,
)
from mmxai.prompt_span import prompt_span
from mmxai.video import Clip, Video, open_video

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
    def read(cls, config: dict[str, Any] | None, image_processor: Any) -> VideoSettings:
        """From a video-processor config dict; None: the image processor's sizes."""
        if config is None:
            size = image_processor.size
            return cls(size_value(size, "shortest_edge"), size_value(size, "longest_edge"))
        size = dict(config.get("size") or DEFAULT_SIZE)
        short = config.get("min_pixels") or size.get("shortest_edge")
        long = config.get("max_pixels") or size.get("longest_edge")
        pixels = tuple((k, tuple(v) if isinstance(v, list) else v)
                       for k, v in config.items() if k in PIXEL_KEYS)
        return cls(int(short), int(long), float(config.get("fps") or DEFAULT_FPS),
                   int(config.get("min_frames") or DEFAULT_MIN_FRAMES),
                   int(config.get("max_frames") or DEFAULT_MAX_FRAMES), pixels)


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
    if n > total:
        raise InputError(f"{what}: {n} frames asked for, but the clip has {total}")
    return torch.arange(0, total, total / n).int().long()


def temporal_patches(n_frames: int, tps: int) -> list[tuple[int, ...]]:
    """The sampled frames each temporal patch covers, the last repeated to fill the last."""
    padded = list(range(n_frames)) + [n_frames - 1] * (-n_frames % tps)
    return [tuple(padded[i:i + tps]) for i in range(0, len(padded), tps)]


def video_pixels(image_processor: Any, frames: list, size: dict[str, int],
                 pixels: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``pixel_values_videos`` (t*h*w, C*tps*ps*ps) and ``video_grid_thw`` (1, 3).

    Each frame goes through the image processor (smart-resize, rescale, normalise), which
    lays out its patches as (h*w, C, tps, ps, ps) merge group by merge group with the frame
    repeated over tps; a video's temporal patch holds tps successive frames there instead.
    """
    tps = int(image_processor.temporal_patch_size)
    ps = int(image_processor.patch_size)
    per_frame, grid = [], None
    for frame in frames:
        out = image_processor(images=[frame], size=size, return_tensors="pt", **pixels)
        values = torch.as_tensor(out["pixel_values"]).float()
        per_frame.append(values.reshape(values.shape[0], -1, tps, ps, ps)[:, :, 0])
        grid = [int(v) for v in out["image_grid_thw"][0]]
    order = [i for patch in temporal_patches(len(frames), tps) for i in patch]
    stacked = torch.stack([per_frame[i] for i in order])  # (t*tps, h*w, C, ps, ps)
    t = len(order) // tps
    patches = stacked.reshape(t, tps, *stacked.shape[1:]).permute(0, 2, 3, 1, 4, 5)
    pixel_values = patches.reshape(t * stacked.shape[1], -1)
    return pixel_values, torch.tensor([[t, grid[1], grid[2]]])


class QwenVideo:
    """Video for a :class:`~mmxai.plugins.models.qwen2_vl.QwenLike` adapter (mixed in first)."""

    #: Whether the model reads the clip's time step (Qwen2.5-VL's ``second_per_grid_ts``).
    timed_video: ClassVar[bool] = False
    #: The checkpoint's video-processor config (:func:`checkpoint_video_config`).
    video_config: dict[str, Any] | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any):
        model = super().from_pretrained(name_or_path, **kwargs)
        model.video_config = checkpoint_video_config(model.model_id, model.revision)
        return model

    @property
    def video_settings(self) -> VideoSettings:
        return VideoSettings.read(self.video_config, self.processor.image_processor)

    def video_chat_text(self, prompt: str) -> str:
        messages = [{"role": "user", "content": [{"type": "video"},
                                                 {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)

    def build_video_inputs(self, video: Video, prompt: str) -> Inputs:
        """Sample ``video`` by Qwen's rule and build the model's inputs: one grid per
        temporal patch (``kind="video"``, ``frame=t``) and the clip in ``inputs.clips[0]``."""
        source = open_video(video)
        settings = self.video_settings
        image_processor = self.processor.image_processor
        tps = int(image_processor.temporal_patch_size)
        indices = sample_indices(source.total_frames, source.fps, settings, tps,
                                 fps=None if source.fps is None else video.fps,
                                 frames=video.frames, what=f"video {source.name}")
        fps = source.fps or video.fps or settings.fps  # a folder's frames: at the given rate
        clip = Clip(source.read(indices.tolist()), indices.numpy().astype(np.int64), fps,
                    source.total_frames, source.name, temporal_patches(len(indices), tps))
        longest = settings.longest_edge if self.max_pixels is None else self.max_pixels
        size = {"shortest_edge": min(settings.shortest_edge, longest), "longest_edge": longest}
        pixel_values, grid_thw = video_pixels(image_processor, clip.frames, size,
                                              dict(settings.pixels))
        features = self.video_text_features(self.video_chat_text(prompt), grid_thw)
        features["pixel_values_videos"] = pixel_values.to(self.device, self.hf.dtype)
        features["video_grid_thw"] = grid_thw.to(self.device)
        if self.timed_video:
            features["second_per_grid_ts"] = torch.tensor([tps / clip.sampled_fps],
                                                          device=self.device)
        grids = stack_grids(self.video_grids(features, grid_thw))
        with_prompt = self.tokenizer(self.video_chat_text(prompt),
                                     add_special_tokens=False)["input_ids"]
        without = self.tokenizer(self.video_chat_text(""), add_special_tokens=False)["input_ids"]
        positions = prompt_span(features["input_ids"][0].tolist(), with_prompt, without)
        return Inputs(features, clip.frames[:1], prompt, grids, positions,
                      dict(self.answer_fill), clips={0: clip})

    def video_text_features(self, text: str, grid_thw: torch.Tensor) -> dict[str, Any]:
        """The chat's token ids with its video placeholder expanded, as the processor does."""
        token = self.processor.video_token
        if text.count(token) != 1:
            raise InputError(f"{self.model_id}: the chat template puts {text.count(token)} "
                             f"{token} placeholders in a chat with one video, expected 1")
        n_tokens = int(grid_thw.prod()) // self.merge_size ** 2
        encoded = self.tokenizer([text.replace(token, token * n_tokens)], return_tensors="pt")
        features = {k: v.to(self.device) for k, v in encoded.items()}
        if "mm_token_type_ids" in inspect.signature(self.hf.forward).parameters:
            ids = features["input_ids"]  # 1: image, 2: video, as create_mm_token_type_ids
            features["mm_token_type_ids"] = ((ids == self.image_token_id()).long()
                                             + 2 * (ids == self.video_token_id()).long())
        return features

    def video_token_id(self) -> int:
        return int(self.hf.config.video_token_id)

    def video_grids(self, features: dict[str, Any], grid_thw: torch.Tensor) -> list[ImageGrid]:
        """One (h/m, w/m) grid per temporal patch, each the whole frame."""
        positions = token_positions(features, self.video_token_id())
        t, h, w = (int(v) for v in grid_thw[0])
        m = self.merge_size
        rows, cols = h // m, w // m
        if len(positions) != t * rows * cols:
            raise InputError(f"{self.model_id}: the prompt has {len(positions)} video tokens "
                             f"but video_grid_thw describes {t * rows * cols}")
        return [ImageGrid(image=0, positions=positions[k * rows * cols:(k + 1) * rows * cols],
                          shape=(rows, cols), frame=k, kind="video") for k in range(t)]
