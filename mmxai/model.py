"""The Model interface: what every attribution method may ask of a multimodal LLM.

An adapter subclasses :class:`Model` for one Hugging Face family and answers, from the
model's own config and the processor's outputs (never hard-coded token ids):

- where the image tokens are and which grid they form (:meth:`Model.image_grids`);
- what the unembedding and the final norm are;
- which vision layers gradient methods can use, and how their tokens map onto the grid;
- how to build the chat-templated inputs for images and a prompt.

Adapters are keyed by HF architecture (``config.architectures[0]``) and registered through
the ``register_models`` hook; :func:`load_model` dispatches on it. What only perturbation
metrics need (swapped images, fused attention) is in :mod:`mmxai.perturb`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmxai import device_map, hub, loading
from mmxai.errors import InputError, UnsupportedModelError
from mmxai.images import read_image
from mmxai.prompt_span import chat_prompt_span


@dataclass
class ImageGrid:
    """One block of image tokens in the LLM sequence, in row-major order.

    ``box`` is the region of the original image the grid covers, as fractions
    ``(x0, y0, x1, y1)``: LLaVA-1.5's centre crop, InternVL's tiles and the like map back
    through it; a grid that covers the whole image has ``(0, 0, 1, 1)``.
    """

    image: int
    positions: np.ndarray  # (rows * cols,) sequence positions
    shape: tuple[int, int]  # (rows, cols)
    frame: int = 0
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    kind: str = "image"
    offset: int = 0  # where this grid starts in the flat concatenation of all grids

    @property
    def size(self) -> int:
        return int(self.shape[0] * self.shape[1])


def stack_grids(grids: Sequence[ImageGrid]) -> list[ImageGrid]:
    """Set each grid's ``offset`` into the flat vector that concatenates all grids."""
    offset = 0
    for grid in grids:
        grid.offset = offset
        offset += grid.size
    return list(grids)


@dataclass
class Inputs:
    """Model-ready inputs for one sample, with the facts methods need about them.

    ``features`` is the processor output (``input_ids`` of shape (1, L), ``pixel_values``,
    ``image_grid_thw``...) already on the model's device.
    """

    features: dict[str, Any]
    images: list[Image.Image]
    prompt: str
    grids: list[ImageGrid]
    prompt_positions: np.ndarray  # positions of the user prompt's text tokens
    answer_fill: dict[str, int] = field(default_factory=dict)  # Model.answer_fill
    #: image index -> :class:`mmxai.video.Clip` for a video; ``images[k]`` is its frame 0
    clips: dict[int, Any] = field(default_factory=dict)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.features["input_ids"][0]

    @property
    def image_positions(self) -> np.ndarray:
        """All image-token positions, grid after grid: the layout of every flat map."""
        if not self.grids:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([g.positions for g in self.grids]).astype(np.int64)


class Model:
    """Base adapter. Subclasses set the class attributes and override the family hooks."""

    name: ClassVar[str] = ""
    architectures: ClassVar[tuple[str, ...]] = ()
    #: (height, width) of the canvas a fixed-resolution model needs; None for native sizes.
    fixed_size: ClassVar[tuple[int, int] | None] = None
    #: Whether several samples may share one left-padded ``generate`` call (:meth:`collate`).
    supports_batching: ClassVar[bool] = True
    #: Whether the processor's tensors for n images have one row per image, so that
    #: :func:`mmxai.perturb.swap_each` can process them in one call (not: patches or tiles
    #: flattened).
    rows_per_image: ClassVar[bool] = True
    #: The family's documented chat template (HF Jinja format), used when a checkpoint's
    #: processor and tokenizer have none (:func:`mmxai.loading.finish`); None: refused.
    default_chat_template: ClassVar[str | None] = None
    #: What a teacher-forced answer's per-token features hold (besides attention_mask = 1;
    #: default 0): PaliGemma marks answer tokens token_type_ids = 1, as generation does.
    answer_fill: ClassVar[dict[str, int]] = {}

    def __init__(self, hf_model: torch.nn.Module, processor: Any, model_id: str | None = None,
                 revision: str | None = None) -> None:
        self.hf = hf_model
        self.processor = processor
        self.model_id = model_id or getattr(hf_model.config, "_name_or_path", "") or self.name
        self.revision = revision

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def hf_classes(cls) -> tuple[Any, Any]:
        """The (model class, processor class) ``from_pretrained`` uses."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        return AutoModelForImageTextToText, AutoProcessor

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None, trust_remote_code: bool = False,
                        revision: str | None = None, chat_template: Any = None,
                        source: hub.Source | None = None, **kwargs: Any) -> Model:
        """Load weights (safetensors only) and processor by hub name or local path, checked
        first (:func:`mmxai.hub.resolve`, unless ``source`` says): never hub retries. The
        processor loads first; what a partial checkpoint lacks (settings, chat template) is
        filled in by :func:`mmxai.loading.finish`, each note a ``LoadNote`` warning.
        ``device_map=`` and ``max_memory=`` split it over devices (:mod:`mmxai.device_map`)."""
        chat_template = loading.chat_template_text(chat_template)
        source = source or hub.resolve(name_or_path)
        model_cls, processor_cls = cls.hf_classes()
        with hub.quiet(source.offline):
            try:
                processor = processor_cls.from_pretrained(
                    source.spec, trust_remote_code=trust_remote_code, revision=revision)
            except Exception as exc:  # the checkpoint's files, not mmxai: one line
                raise loading.processor_error(source.spec, exc) from exc
            hf_model = device_map.load_weights(  # on ``device``, or split by device_map=
                model_cls, source.spec, device, dtype=dtype or "auto",
                trust_remote_code=trust_remote_code, revision=revision, **kwargs)
        model = cls(hf_model, processor, model_id=source.spec, revision=revision)
        model._load_notes = loading.finish(model, chat_template)
        for note in model.load_notes:
            warnings.warn(note, loading.LoadNote, stacklevel=2)
        return model

    @property
    def load_notes(self) -> list[str]:
        """What :meth:`from_pretrained` filled in that the checkpoint lacked, one line each."""
        return list(getattr(self, "_load_notes", []))

    @classmethod
    def complete_processor(cls, processor: Any, config: Any) -> list[str]:
        """Fill, from the model's ``config``, what an older or partial checkpoint's processor
        lacks (no ``processor_config.json``); returns what was filled as ``name=value``.
        Here: the config's image token where the processor's differs. Adapters add their
        family's settings (calling ``super()`` first)."""
        return loading.fill_image_token(processor, config)

    @classmethod
    def tiny(cls, seed: int = 0) -> Model:
        """A tiny random-weight model of this family, built offline (tests, demos).

        The built-in adapters delegate to their builder in ``mmxai.plugins.models.tiny``;
        ``mmxai tiny`` lists every adapter that overrides this.
        """
        raise NotImplementedError(f"{cls.__name__} has no tiny builder")

    # -- inputs --------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def device(self) -> torch.device:
        return device_map.input_device(self.hf)  # a split model's: its input embeddings'

    def messages(self, prompt: str, n_images: int) -> list[dict[str, Any]]:
        """The chat: images first, then the prompt (as TAM and the model cards do)."""
        content = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": prompt})
        return [{"role": "user", "content": content}]

    def chat_text(self, prompt: str, n_images: int) -> str:
        return self.processor.apply_chat_template(
            self.messages(prompt, n_images), add_generation_prompt=True, tokenize=False
        )

    def preprocess(self, images: Sequence[Image.Image], text: str | Sequence[str],
                   **kwargs: Any) -> dict[str, Any]:
        """Run the processor on one text (or a batch of texts, the images in their order);
        adapters override to resize or pass family options (``kwargs``)."""
        texts = [text] if isinstance(text, str) else list(text)
        return self.processor(images=list(images) or None, text=texts, return_tensors="pt",
                              **kwargs)

    def features(self, images: Sequence[Image.Image],
                 text: str | Sequence[str]) -> dict[str, Any]:
        """:meth:`preprocess`'s outputs on the model's device, pixels in the model's dtype."""
        features = {k: v.to(self.device) if torch.is_tensor(v) else v
                    for k, v in dict(self.preprocess(images, text)).items()}
        if "pixel_values" in features and features["pixel_values"].is_floating_point():
            features["pixel_values"] = features["pixel_values"].to(self.hf.dtype)
        return features

    def build_inputs(self, images: Sequence[Image.Image], prompt: str) -> Inputs:
        # Upright and faithfully 8-bit whatever the caller hands over (EXIF, 16-bit, alpha):
        # images read by mmxai already are, and reading them again changes nothing.
        images = [read_image(im, f"image {i}") for i, im in enumerate(images)]
        features = self.features(images, self.chat_text(prompt, len(images)))
        grids = stack_grids(self.image_grids(features, images))
        prompt_positions = self.locate_prompt(features["input_ids"][0], prompt, len(images))
        return Inputs(features, images, prompt, grids, prompt_positions, dict(self.answer_fill))

    def locate_prompt(self, input_ids: torch.Tensor, prompt: str, n_images: int) -> np.ndarray:
        """Positions of the user prompt's tokens, found by diffing two templated chats.

        The chat with the prompt and the chat with an empty prompt share a prefix and a
        suffix; what lies between is the prompt. No family's marker ids are needed.
        """
        return chat_prompt_span(self.tokenizer, input_ids.tolist(),
                                lambda text: self.chat_text(text, n_images), prompt)

    # -- batching ----------------------------------------------------------------------
    def pad_token_id(self) -> int:
        """The id that left-pads a batch: the generation config's, the tokenizer's, or EOS."""
        for token_id in (self.hf.generation_config.pad_token_id, self.tokenizer.pad_token_id,
                         self.hf.generation_config.eos_token_id):
            if isinstance(token_id, (list, tuple)):
                token_id = token_id[0] if token_id else None
            if token_id is not None:
                return int(token_id)
        return 0

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Several samples' ``Inputs.features`` as one left-padded batch for ``generate``.

        Per-token tensors, (1, L_i) like ``input_ids``, are left-padded to the longest L:
        ``input_ids`` with :meth:`pad_token_id`, the rest (attention mask, token types) with 0,
        so the attention mask hides the padding. Every other tensor is concatenated along
        dim 0, which stacks images in sample order: Qwen's (N_patches, C) ``pixel_values``
        and (n_images, 3) ``image_grid_thw``, LLaVA's (n_images, 3, H, W), InternVL's
        (n_tiles, 3, H, W). Adapters whose image tensors need more override this.
        """
        keys = set(features[0])
        if any(set(f) != keys for f in features):
            raise InputError("samples with different processor outputs cannot share a batch")
        lengths = [int(f["input_ids"].shape[1]) for f in features]
        width = max(lengths)
        batch: dict[str, Any] = {}
        for key, value in features[0].items():
            if not torch.is_tensor(value):
                batch[key] = value
            elif all(f[key].shape == (1, n) for f, n in zip(features, lengths, strict=True)):
                fill = self.pad_token_id() if key == "input_ids" else 0
                batch[key] = torch.cat([F.pad(f[key], (width - n, 0), value=fill)
                                        for f, n in zip(features, lengths, strict=True)])
            else:
                batch[key] = torch.cat([f[key] for f in features])
        return batch

    # -- family hooks --------------------------------------------------------------------
    def image_grids(self, features: dict[str, Any],
                    images: Sequence[Image.Image]) -> list[ImageGrid]:
        """The grids of image tokens in ``features['input_ids']``, in sequence order."""
        raise NotImplementedError

    def image_token_id(self) -> int:
        config = self.hf.config
        token_id = getattr(config, "image_token_id", None)
        if token_id is None:
            token_id = getattr(config, "image_token_index", None)
        if token_id is None:
            raise UnsupportedModelError(f"{self.model_id}: config has no image_token_id")
        return int(token_id)

    def unembedding(self) -> torch.Tensor:
        """The unembedding matrix W_U, shape (V, d): logits = W_U @ h."""
        return device_map.resident(self.hf.get_output_embeddings())  # even if offloaded

    def final_norm(self) -> torch.nn.Module:
        return self.hf.model.language_model.norm

    def decoder_layers(self) -> Sequence[torch.nn.Module]:
        return self.hf.model.language_model.layers

    def vision_layers(self) -> Sequence[torch.nn.Module]:
        """Vision-encoder blocks, input to output; the last one feeds the projector."""
        raise NotImplementedError

    def default_vision_layer(self) -> int:
        """Index into :meth:`vision_layers` of the layer whose output feeds the projector."""
        feature_layer = getattr(self.hf.config, "vision_feature_layer", -1)
        if isinstance(feature_layer, (list, tuple)):
            feature_layer = feature_layer[-1]
        n = len(self.vision_layers())
        if feature_layer is None:
            return n - 1
        # HF hidden_states[k] is the output of layer k - 1: index 0 holds the embeddings.
        index = int(feature_layer)
        if index == 0 or index < -n:
            raise UnsupportedModelError(f"{self.model_id}: vision features are the embeddings")
        return index - 1 if index > 0 else index % n

    def vision_tokens_to_grids(self, scores: Sequence[torch.Tensor],
                               inputs: Inputs) -> torch.Tensor:
        """Map per-token scores of a vision layer onto the LLM image grids.

        ``scores`` holds one tensor per call of the chosen vision layer during one forward
        pass: the layer output's shape without its channel dim, e.g. (n_images, 1 + S*S) for
        CLIP-style towers (CLS first) or (N_patches,) for Qwen's batchless blocks. Returns a
        flat (N_image,) tensor laid out like every other map (``inputs.image_positions``).
        """
        raise NotImplementedError

    def set_eager_attention(self) -> bool:
        """Switch to eager attention (the only kind that returns weights); True if changed."""
        current = getattr(self.hf.config, "_attn_implementation", None)
        if current == "eager":
            return False
        warnings.warn(f"{self.model_id}: switching attention from {current!r} to 'eager' to "
                      "record attention weights (slower, more memory)", stacklevel=2)
        self.hf.set_attn_implementation("eager")
        return True


def wrap(hf_model: torch.nn.Module, processor: Any, model_id: str | None = None) -> Model:
    """Wrap an already-loaded Hugging Face model in the adapter registered for its class."""
    adapter = adapter_for(type(hf_model).__name__)
    return adapter(hf_model, processor, model_id=model_id)


def adapter_for(architecture: str) -> type[Model]:
    from mmxai.registry import manager

    adapters = manager().items("models")
    if architecture not in adapters:
        supported = ", ".join(sorted(adapters)) or "none (no model plugin loaded)"
        raise UnsupportedModelError(
            f"no adapter for architecture {architecture!r}; supported: {supported}"
        )
    return adapters[architecture]


def load_model(name_or_path: str, *, trust_remote_code: bool = False,
               revision: str | None = None, chat_template: Any = None,
               source: hub.Source | None = None, **kwargs: Any) -> Model:
    """Load a model by hub name or local path, e.g. ``Qwen/Qwen2-VL-2B-Instruct``, with its
    architecture's adapter, and check that it runs (:func:`mmxai.loading.preflight`).
    ``chat_template``: text or a path (:func:`mmxai.loading.chat_template_text`); ``source``:
    :func:`mmxai.hub.resolve`'s answer if the caller has it; ``kwargs``: ``device``..."""
    from transformers import AutoConfig

    chat_template = loading.chat_template_text(chat_template)
    source = source or hub.resolve(name_or_path)
    try:
        with hub.quiet(source.offline):
            config = AutoConfig.from_pretrained(
                source.spec, trust_remote_code=trust_remote_code, revision=revision
            )
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"cannot load model {name_or_path!r}: {exc}") from exc
    architectures = getattr(config, "architectures", None) or []
    if isinstance(architectures, str) or not all(isinstance(a, str) for a in architectures):
        raise UnsupportedModelError(f"{name_or_path!r}: config.json's architectures must be a "
                                    f"list of class names, got {architectures!r}")
    if not architectures:
        raise UnsupportedModelError(f"{name_or_path!r}: config names no architecture")
    adapter = adapter_for(architectures[0])
    model = adapter.from_pretrained(
        source.spec, trust_remote_code=trust_remote_code, revision=revision,
        chat_template=chat_template, source=source, **kwargs
    )
    loading.preflight(model)
    return model
