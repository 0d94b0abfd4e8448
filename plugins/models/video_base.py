"""What the video adapters share (Qwen's, LLaVA-OneVision's): the checkpoint's video
settings, the chat with one video, its placeholder expanded to the clip's tokens (refused
past the model's context), and the :class:`~mmxai.model.Inputs` around the family's grids.

A family mixes :class:`VideoInput` in first and states its own layout through two hooks,
:meth:`~VideoInput.n_video_tokens` and :meth:`~VideoInput.video_grids`, both given the
family's ``layout`` of the clip (Qwen: ``video_grid_thw``; LLaVA-OneVision: the frame
count).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mmxai.errors import InputError
from mmxai.model import ImageGrid, Inputs, stack_grids
from mmxai.plugins.models.shared import checkpoint_video_config, token_positions
from mmxai.prompt_span import chat_prompt_span
from mmxai.video import Clip, Video, VideoFile, open_video


def sampled_clip(video: Video, source: VideoFile | None,
                 sample: Callable[[VideoFile], Any], default_fps: float,
                 patches: Callable[[int], list[tuple[int, ...]]]) -> Clip:
    """The :class:`Clip` of ``video``'s frames that ``sample(source)`` picks (source frame
    indices), at the source's rate, else the asked one (``video.fps``: a folder's frames),
    else ``default_fps``; ``patches(n)`` are its n frames' temporal patches. ``source`` is
    the clip already opened (:func:`mmxai.api.explain` opens it to check it before the
    model loads), so a list of frames, a GIF or an uncounted file is not read twice; None
    opens it here."""
    source = open_video(video) if source is None else source
    indices = np.asarray(sample(source), dtype=np.int64)
    fps = source.fps or video.fps or default_fps
    return Clip(source.read(indices.tolist()), indices, fps, source.total_frames,
                source.name, patches(len(indices)))


class VideoInput:
    """One clip in a chat, for a :class:`~mmxai.model.Model` adapter (mixed in first)."""

    #: The checkpoint's video-processor config (:func:`checkpoint_video_config`).
    video_config: dict[str, Any] | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any):
        model = super().from_pretrained(name_or_path, **kwargs)
        model.video_config = checkpoint_video_config(model.model_id, model.revision)
        return model

    def n_video_tokens(self, layout: Any) -> int:
        """How many video tokens the chat's placeholder becomes for the clip ``layout``."""
        raise NotImplementedError

    def video_grids(self, positions: np.ndarray, layout: Any) -> list[ImageGrid]:
        """The clip's grids over its (n_video_tokens,) token ``positions``."""
        raise NotImplementedError

    def video_chat_text(self, prompt: str) -> str:
        messages = [{"role": "user", "content": [{"type": "video"},
                                                 {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)

    def video_token_id(self) -> int:
        return int(self.hf.config.video_token_id)

    def video_text_features(self, prompt: str, clip: Clip, layout: Any) -> dict[str, Any]:
        """The chat's token ids with its video placeholder expanded, as the processor does;
        a chat longer than the model's context is refused before anything generates."""
        text = self.video_chat_text(prompt)
        token = self.processor.video_token
        if text.count(token) != 1:
            raise InputError(f"{self.model_id}: the chat template puts {text.count(token)} "
                             f"{token} placeholders in a chat with one video, expected 1")
        n_tokens = self.n_video_tokens(layout)
        encoded = self.tokenizer([text.replace(token, token * n_tokens)], return_tensors="pt")
        length = int(encoded["input_ids"].shape[1])
        context = getattr(self.hf.config.get_text_config(), "max_position_embeddings", None)
        if context is not None and length >= int(context):  # no room for one new token
            raise InputError(f"video {clip.name}: {len(clip.frames)} frames take {n_tokens} "
                             f"video tokens ({length} with the chat), past {self.model_id}'s "
                             f"context of {context} (max_position_embeddings): sample fewer "
                             "frames (--frames N or --fps F)")
        return {k: v.to(self.device) for k, v in encoded.items()}

    def video_inputs(self, features: dict[str, Any], prompt: str, clip: Clip,
                     layout: Any) -> Inputs:
        """The model's inputs: the family's grids over the video tokens, the prompt's
        positions, and the clip in ``inputs.clips[0]`` (its first frame as the image)."""
        positions = token_positions(features, self.video_token_id())
        expected = self.n_video_tokens(layout)
        if len(positions) != expected:
            raise InputError(f"{self.model_id}: the prompt has {len(positions)} video tokens "
                             f"but the clip needs {expected}")
        grids = stack_grids(self.video_grids(positions, layout))
        prompt_positions = chat_prompt_span(self.tokenizer, features["input_ids"][0].tolist(),
                                            self.video_chat_text, prompt)
        return Inputs(features, clip.frames[:1], prompt, grids, prompt_positions,
                      dict(self.answer_fill), clips={0: clip})
