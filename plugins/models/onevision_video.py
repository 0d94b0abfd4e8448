"""LLaVA-OneVision video input, without transformers' video processor.

transformers' ``LlavaOnevisionVideoProcessor`` (like every ``BaseVideoProcessor``) imports
torchvision, which mmxai must not need. Its documented behaviour is replayed here:

- frames are taken as ``default_sample_indices_fn`` takes them (:func:`sample_indices`):
  ``frames`` evenly (``arange(n) * total // n``), or ``fps`` frames a second
  (``n = max(1, int(total / video_fps * fps))``), else every frame: the processor's
  ``do_sample_frames`` is off by default, so it keeps all the frames it is given;
- each frame is resized to the video settings' ``size`` (the tower's square, 384 px on the
  real checkpoints), rescaled and normalised: ``pixel_values_videos`` (1, F, C, H, W). With
  the image processor's settings (a checkpoint without video settings loads its video
  processor from ``preprocessor_config.json``) a frame is exactly an image's base view;
- the chat's ``<video>`` becomes ``F * P * P + 1`` tokens: each frame's ``(S, S)`` patch
  features pooled bilinearly to ``P = ceil(S / 2)`` (``apply_pooling``), frame after
  frame, then ONE ``image_newline`` after the whole clip (``get_video_features``), which is
  no frame's and so no grid's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmxai.errors import InputError, UnsupportedModelError
from mmxai.model import ImageGrid, Inputs
from mmxai.plugins.models.shared import stack_calls
from mmxai.plugins.models.video_base import VideoInput, sampled_clip
from mmxai.video import Video, VideoFile

#: The rate given to a folder or list of frames when none is asked for: the video
#: processor has no rate of its own (it takes the frames it is handed).
FOLDER_FPS = 1.0
#: Settings a video config sets for its frames (the rest are sampling or bookkeeping).
PIXEL_KEYS = ("size", "resample", "do_resize", "do_center_crop", "crop_size", "do_rescale",
              "rescale_factor", "do_normalize", "image_mean", "image_std")


def video_processor_defaults() -> dict[str, Any]:
    """``LlavaOnevisionVideoProcessor``'s class defaults (its module imports torchvision:
    the values are its source's)."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

    return {"size": {"height": 384, "width": 384}, "resample": PILImageResampling.BICUBIC,
            "do_resize": True, "do_center_crop": None, "crop_size": None, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": OPENAI_CLIP_MEAN,
            "image_std": OPENAI_CLIP_STD}


@dataclass(frozen=True)
class FrameSettings:
    """What the video processor does to each frame, and how it samples by default."""

    pixels: dict[str, Any]  # PIXEL_KEYS
    num_frames: int | None = None  # the default sampling (do_sample_frames): a count ...
    fps: float | None = None  # ... or a rate; neither: every frame

    @classmethod
    def read(cls, config: dict[str, Any] | None, image_processor: Any) -> FrameSettings:
        """From a video-processor config dict, its class defaults where it is silent; None:
        the image processor's settings (transformers loads the video processor from the
        image processor's file then)."""
        if config is None:
            return cls({k: getattr(image_processor, k, None) for k in PIXEL_KEYS})
        pixels = {**video_processor_defaults(),
                  **{k: v for k, v in config.items() if k in PIXEL_KEYS}}
        if not config.get("do_sample_frames"):
            return cls(pixels)
        return cls(pixels, config.get("num_frames"), config.get("fps"))


def sample_indices(total: int, video_fps: float | None, fps: float | None,
                   frames: int | None, what: str = "video") -> np.ndarray:
    """transformers' ``default_sample_indices_fn``: the (n,) source frames to take of
    ``total``; a source with no rate (a folder of frames) cannot be sampled by time."""
    if frames is None and fps is not None and video_fps is not None:
        frames = max(1, int(total / video_fps * fps))
    if frames is None:
        return np.arange(total, dtype=np.int64)
    if frames > total:
        raise InputError(f"{what}: {frames} frames asked for, but the clip has {total}")
    return np.arange(frames, dtype=np.int64) * total // frames


def frame_pixels(image_processor: Any, frame: Any, pixels: dict[str, Any]) -> np.ndarray:
    """One frame as the video processor leaves it, (C, H, W) float32: resize, centre crop,
    rescale, normalise, with the image processor's PIL operations."""
    from transformers.image_utils import SizeDict

    def size(value: Any) -> SizeDict:  # a config's dict, or the image processor's SizeDict
        return value if isinstance(value, SizeDict) else SizeDict(**value)

    array = image_processor.process_image(frame, do_convert_rgb=True)
    if pixels["do_resize"]:
        array = image_processor.resize(array, size(pixels["size"]), resample=pixels["resample"])
    if pixels["do_center_crop"]:
        array = image_processor.center_crop(array, size(pixels["crop_size"]))
    if pixels["do_rescale"]:
        array = image_processor.rescale(array, pixels["rescale_factor"])
    if pixels["do_normalize"]:
        array = image_processor.normalize(array, pixels["image_mean"], pixels["image_std"])
    return np.asarray(array, dtype=np.float32)


class OnevisionVideo(VideoInput):
    """Video for :class:`~mmxai.plugins.models.llava_onevision.LlavaOnevision` (mixed in
    first): one ``(P, P)`` grid per frame."""

    @property
    def frame_settings(self) -> FrameSettings:
        return FrameSettings.read(self.video_config, self.processor.image_processor)

    def pooled_side(self) -> tuple[int, int]:
        """(S, P): the tower's patches per side, and per side after ``apply_pooling``."""
        vision = self.hf.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        return side, math.ceil(side / 2)

    def build_video_inputs(self, video: Video, prompt: str,
                           source: VideoFile | None = None) -> Inputs:
        """Sample ``video`` as the video processor does and build the model's inputs: one
        grid per frame (``kind="video"``, ``frame=t``), the clip in ``inputs.clips[0]``.
        ``source``: the clip already opened (None: opened here)."""
        settings = self.frame_settings
        asked = video.fps is not None or video.frames is not None

        def sample(source: VideoFile) -> np.ndarray:
            return sample_indices(source.total_frames, source.fps,
                                  video.fps if asked else settings.fps,
                                  video.frames if asked else settings.num_frames,
                                  what=f"video {source.name}")

        clip = sampled_clip(video, source, sample, FOLDER_FPS,
                            lambda n: [(i,) for i in range(n)])
        image_processor = self.processor.image_processor
        frames = np.stack([frame_pixels(image_processor, f, settings.pixels)
                           for f in clip.frames])
        side = int(self.hf.config.vision_config.image_size)
        if frames.shape[-2:] != (side, side):
            raise UnsupportedModelError(
                f"{self.model_id}: the video settings make {frames.shape[-1]}x"
                f"{frames.shape[-2]} frames, but the vision tower pools {side}x{side} ones")
        features = self.video_text_features(prompt, clip, len(clip.frames))
        features["pixel_values_videos"] = torch.from_numpy(frames)[None].to(self.device,
                                                                          self.hf.dtype)
        return self.video_inputs(features, prompt, clip, len(clip.frames))

    def n_video_tokens(self, layout: int) -> int:
        """``layout`` frames' pooled tokens and the clip's newline, as the processor's
        ``replace_video_token`` expands ``<video>``."""
        pooled = self.pooled_side()[1]
        return layout * pooled * pooled + 1

    def video_grids(self, positions: np.ndarray, layout: int) -> list[ImageGrid]:
        """One (P, P) grid per frame, each the whole frame (squashed to the tower's square);
        the last video token is the clip's newline, in no grid."""
        pooled = self.pooled_side()[1]
        per_frame = pooled * pooled
        return [ImageGrid(image=0, positions=positions[k * per_frame:(k + 1) * per_frame],
                          shape=(pooled, pooled), frame=k, kind="video")
                for k in range(layout)]

    def video_tokens_to_grids(self, scores: list[torch.Tensor], inputs: Inputs) -> torch.Tensor:
        """(F, [CLS +] S*S) scores of the tower's frames -> the flat map over the frames'
        grids, each frame's (S, S) scores pooled as the model pools its features (bilinear
        to (P, P)), so a cell gets the interpolated scores of the patches it mixes."""
        side, pooled = self.pooled_side()
        patches = stack_calls(scores)[:, -side * side:].reshape(-1, 1, side, side)
        cells = F.interpolate(patches, size=[pooled, pooled], mode="bilinear")
        return cells.reshape(-1)
