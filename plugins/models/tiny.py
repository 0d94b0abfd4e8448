"""Tiny, offline, random-weight models of real HF architectures: one builder per family.

No package ships tokenizer files and no hub is reachable in tests, so each family's tiny
model is built from a config object and a tokenizer trained here (text hidden 64 x 2
layers, vision hidden 32 x 2 layers, 14-pixel patches). The words below are enough for
prompts, captions and the bundled benchmark's grammar. Each adapter's ``tiny`` classmethod
calls its builder here (``tiny_llava(cls, seed)`` ...), which imports only the adapter class
it is given: the chat templates and special tokens below are the tiny models' own (a real
checkpoint ships its template).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mmxai.model import Model

M = TypeVar("M", bound=Model)

CORPUS = (
    "a an the this that is are was of in on at to and with for by from left right above below "
    "image picture photo describe write caption one sentence short what where which who there "
    "red green blue yellow purple orange white black gray brown pink cyan "
    "circle square triangle star cross diamond ring bar shape object "
    "dog cat person man woman car bus tree sky road table cup people child boy girl "
    "small large big near next behind front top bottom middle two three four "
    ". , : ? ! ' \" ( ) - \n"
)

# A generic ChatML-style template; families with their own template pass theirs.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ image_markup }}{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(special_tokens: Sequence[str], extra_text: str = "", vocab_size: int = 800,
                    **fast_kwargs):
    """A byte-level BPE tokenizer trained on :data:`CORPUS`, wrapped for transformers.

    ``special_tokens`` (the family's image, vision-boundary and chat tokens) are added as
    single, unsplittable tokens. ``fast_kwargs`` go to ``PreTrainedTokenizerFast`` (e.g.
    ``bos_token``, ``eos_token``, ``pad_token``, ``chat_template``).
    """
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = (CORPUS + " " + extra_text).split("\n")
    tokenizer.train_from_iterator(text * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **fast_kwargs)
    fast.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    return fast


def random_model(model_cls, config, seed: int = 0):
    """``model_cls(config)`` with weights drawn from ``seed``, eager attention, in eval mode.

    Eager attention is the only kind that returns attention weights (sdpa returns none).
    """
    import torch

    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()


# -- LLaVA-1.5 and LLaVA-NeXT ------------------------------------------------------------------
#: Tiny sizes shared by the LLaVA family: 56-pixel crops of 14-pixel patches, a 4 x 4 grid.
TINY_IMAGE_SIZE = 56
TINY_PATCH_SIZE = 14
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
#: The real LLaVA-NeXT checkpoints' pinpoints scaled from 336-pixel to 56-pixel tiles.
TINY_PINPOINTS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]

#: llava-hf's template: images first (``<image>\n`` each), then the text, then the answer cue.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ part['text'] + ' ' }}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: llava-hf's LLaVA-NeXT (Mistral) template: ``[INST] <image>\n{prompt} [/INST]``.
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ part['text'] }}{% endfor %}{% endif %}{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ part['text'] }}{% endfor %}{% endif %}{{ '</s> ' }}"
    "{% endif %}{% endfor %}"
)


def tiny_clip_config():
    """A 2-layer, 32-wide CLIP vision tower on :data:`TINY_IMAGE_SIZE` crops."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, image_size=TINY_IMAGE_SIZE,
                            patch_size=TINY_PATCH_SIZE, projection_dim=32)


def tiny_llava(cls: type[M], seed: int = 0) -> M:
    """Tiny LLaVA-1.5: Llama text (64 wide, 2 layers), CLIP tower on 56-pixel crops."""
    return _tiny_llava_family(cls, seed, "Llava", "LlamaConfig", LLAVA_CHAT_TEMPLATE,
                              ["<image>", "<s>", "</s>", "<pad>"], "tiny-llava",
                              extra_text="USER ASSISTANT")


def tiny_llava_next(cls: type[M], seed: int = 0) -> M:
    """Tiny LLaVA-NeXT: Mistral text (64 wide, 2 layers), CLIP tower, 56-pixel tiles."""
    return _tiny_llava_family(cls, seed, "LlavaNext", "MistralConfig", LLAVA_NEXT_CHAT_TEMPLATE,
                              ["<image>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]"],
                              "tiny-llava-next", image_grid_pinpoints=TINY_PINPOINTS)


def _tiny_llava_family(cls: type[M], seed: int, prefix: str, text_config: str, template: str,
                       special_tokens: list[str], model_id: str, extra_text: str = "",
                       **anyres: Any) -> M:
    """A CLIP tower on 56-pixel crops and a 64-wide text model, through transformers'
    ``{prefix}Config``, ``{prefix}ImageProcessorPil``, ``{prefix}Processor`` and
    ``{prefix}ForConditionalGeneration``; ``anyres`` goes to the image processor and the
    config alike (LLaVA-NeXT's pinpoints)."""
    import transformers

    tokenizer = train_tokenizer(special_tokens, extra_text=extra_text, bos_token="<s>",
                                eos_token="</s>", pad_token="<pad>", chat_template=template)
    image_processor = getattr(transformers, f"{prefix}ImageProcessorPil")(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, **anyres,
    )
    processor = getattr(transformers, f"{prefix}Processor")(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=TINY_PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=template,
    )
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=tiny_clip_config(),
        text_config=getattr(transformers, text_config)(vocab_size=len(tokenizer), **TINY_TEXT),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id, **anyres,
    )
    model = random_model(getattr(transformers, f"{prefix}ForConditionalGeneration"), config,
                         seed)
    return cls(model, processor, model_id=model_id)


# -- Qwen2-VL and Qwen2.5-VL -------------------------------------------------------------------
QWEN_VISION_TOKENS = (
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", *QWEN_VISION_TOKENS,
)
QWEN_IMAGE_MARKUP = "<|vision_start|><|image_pad|><|vision_end|>"


def tiny_qwen2_vl(cls: type[M], seed: int = 0) -> M:
    """Text hidden 64 x 2 layers, vision hidden 32 x 2 blocks, patch 14; 4-32 tokens/image."""
    return _tiny_qwen(cls, seed, dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2,
                                      mlp_ratio=2, patch_size=14, spatial_merge_size=2,
                                      temporal_patch_size=2))


def tiny_qwen2_5_vl(cls: type[M], seed: int = 0) -> M:
    """As :func:`tiny_qwen2_vl`, with Qwen2.5-VL's windowed vision blocks."""
    # 56-pixel windows are 2x2 LLM tokens, so even tiny grids are window-permuted
    return _tiny_qwen(cls, seed, dict(depth=2, hidden_size=32, out_hidden_size=64,
                                      intermediate_size=64, num_heads=2, patch_size=14,
                                      spatial_merge_size=2, temporal_patch_size=2,
                                      window_size=56, fullatt_block_indexes=[1]))


def _tiny_qwen(cls: type[M], seed: int, vision_config: dict[str, Any]) -> M:
    """The Qwen family's tiny model: ``cls.config_name``, ``cls.architectures[0]`` and the
    adapter's image-only processor (``cls.hf_classes()``) around ``vision_config``."""
    import transformers

    template = CHATML_TEMPLATE.replace("{{ image_markup }}", QWEN_IMAGE_MARKUP).replace(
        "{% else %}{{ part['text'] }}", "{% elif part['type'] == 'video' %}"
        "<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ part['text'] }}")
    tokenizer = train_tokenizer(QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>",
                                pad_token="<|endoftext|>", chat_template=template)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        # mrope splits head_dim / 2 = 8 rotary frequencies over (t, h, w)
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": [2, 3, 3]},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    config = getattr(transformers, cls.config_name)(
        text_config=text_config, vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    hf_model = random_model(getattr(transformers, cls.architectures[0]), config, seed)
    # A trained model never writes vision placeholders; a random one would, and a
    # placeholder in the answer breaks teacher forcing (image features != image tokens).
    hf_model.generation_config.suppress_tokens = [ids[t] for t in QWEN_VISION_TOKENS]
    # smart-resize to 4..32 LLM tokens (16..128 patches) per image
    image_processor = transformers.Qwen2VLImageProcessorPil(
        min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 32
    )
    processor = cls.hf_classes()[1](image_processor=image_processor, tokenizer=tokenizer,
                                    chat_template=template)
    return cls(hf_model, processor, model_id=f"tiny-{cls.name}")


# -- InternVL ----------------------------------------------------------------------------------
#: The InternVL3 -hf template: ChatML, ``<IMG_CONTEXT>\n`` per image (the processor expands it).
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif part['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: The tokens InternVL's processor looks up on the tokenizer by these names.
INTERNVL_IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                         "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
INTERNVL_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                           *INTERNVL_IMAGE_TOKENS.values())


def tiny_internvl(cls: type[M], seed: int = 0) -> M:
    """Tiny InternVL3: Qwen2 text (64 wide, 2 layers), 2-layer tower on 56-pixel tiles.

    Tiles of 4 x 4 patches fold into 2 x 2 tokens; up to 4 tiles plus a thumbnail. The
    processor is the adapter's own image-only one (``cls.hf_classes()``).
    """
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
        Qwen2Config,
    )

    tokenizer = train_tokenizer(INTERNVL_SPECIAL_TOKENS, extra_text="user assistant",
                                extra_special_tokens=INTERNVL_IMAGE_TOKENS,
                                eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                chat_template=INTERNVL_CHAT_TEMPLATE)
    image_processor = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56},
                                               crop_to_patches=True, min_patches=1,
                                               max_patches=4)
    processor = cls.hf_classes()[1](image_processor=image_processor, tokenizer=tokenizer,
                                    image_seq_length=4, chat_template=INTERNVL_CHAT_TEMPLATE)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4,
                                           image_size=56, patch_size=14),
        text_config=Qwen2Config(vocab_size=len(tokenizer), hidden_size=64,
                                intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=2048),
        image_token_id=tokenizer.context_image_token_id, image_seq_length=4,
        downsample_ratio=0.5, vision_feature_layer=-1,
        vision_feature_select_strategy="default", pad_token_id=tokenizer.pad_token_id,
    )
    model = random_model(InternVLForConditionalGeneration, config, seed)
    return cls(model, processor, model_id="tiny-internvl")
