"""GLM-4V (GLM-4.1V-Thinking and its kin): Qwen-like merged-patch grids, GLM's own markers.

The processor smart-resizes each image whole to multiples of ``patch_size * merge_size``
(its pixel bounds count the image as ``temporal_patch_size`` frames) and orders the patches
so that each ``m x m`` merge group is contiguous. Image ``i`` with
``image_grid_thw[i] = (t, H, W)`` is ``t`` row-major grids of ``(H // m, W // m)`` tokens
``<|image|>`` (``config.image_token_id``) between ``<|begin_of_image|>`` and
``<|end_of_image|>``; m = ``vision_config.spatial_merge_size``.

The vision blocks (``model.model.visual.blocks``) attend within each image in patch order;
after the last one a norm and an ``m x m`` stride-``m`` convolution fold each merge group into
one token before the merger, so per-patch scores of a block average over merge groups onto
the grid, as Qwen2-VL's.
"""

from __future__ import annotations

from mmxai.hookspecs import hookimpl
from mmxai.plugins.models.qwen2_vl import QwenLike
from mmxai.plugins.models.tiny import TINY_TEXT, random_model, train_tokenizer

#: zai-org/GLM-4.1V-9B-Thinking's chat template, byte for byte.
GLM4V_CHAT_TEMPLATE = r"""[gMASK]<sop>
{%- for msg in messages %}
    {%- if msg.role == 'system' %}
<|system|>
{{ msg.content }}
    {%- elif msg.role == 'user' %}
<|user|>{{ '\n' }}

        {%- if msg.content is string %}
{{ msg.content }}
        {%- else %}
            {%- for item in msg.content %}
                {%- if item.type == 'video' or 'video' in item %}
<|begin_of_video|><|video|><|end_of_video|>
                {%- elif item.type == 'image' or 'image' in item %}
<|begin_of_image|><|image|><|end_of_image|>
                {%- elif item.type == 'text' %}
{{ item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
    {%- elif msg.role == 'assistant' %}
        {%- if msg.metadata %}
<|assistant|>{{ msg.metadata }}
{{ msg.content }}
        {%- else %}
<|assistant|>
{{ msg.content }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}<|assistant|>
{% endif %}"""

GLM4V_VISION_TOKENS = ("<|begin_of_image|>", "<|end_of_image|>", "<|image|>",
                       "<|begin_of_video|>", "<|end_of_video|>", "<|video|>")
GLM4V_SPECIAL_TOKENS = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
                        "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                        *GLM4V_VISION_TOKENS)


class Glm4v(QwenLike):
    """GLM-4V: ``model.model.visual.blocks`` in patch order, a 2x2 convolution, the merger."""

    name = "glm4v"
    architectures = ("Glm4vForConditionalGeneration",)
    processor_name = "Glm4vProcessor"
    config_name = "Glm4vConfig"
    budget_counts_frames = True
    default_chat_template = GLM4V_CHAT_TEMPLATE

    @classmethod
    def tiny(cls, seed: int = 0) -> Glm4v:
        return tiny_glm4v(cls, seed)


def tiny_glm4v(cls: type[Glm4v], seed: int = 0) -> Glm4v:
    """Text hidden 64 x 2 layers (GLM's four norms per layer, half-rotary mrope), vision
    hidden 32 x 2 blocks on 14-pixel patches; 4-32 LLM tokens per image; the real template."""
    import transformers

    tokenizer = train_tokenizer(GLM4V_SPECIAL_TOKENS, eos_token="<|endoftext|>",
                                pad_token="<|endoftext|>", chat_template=GLM4V_CHAT_TEMPLATE)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in GLM4V_SPECIAL_TOKENS}
    patch, merge, frames = 14, 2, 2
    text_config = dict(
        TINY_TEXT, vocab_size=len(tokenizer),
        # mrope over the rotary half of head_dim 16: 4 frequencies (t, h, w)
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": [2, 1, 1], "partial_rotary_factor": 0.5},
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                         patch_size=patch, spatial_merge_size=merge, temporal_patch_size=frames,
                         out_hidden_size=TINY_TEXT["hidden_size"], image_size=56)
    config = getattr(transformers, cls.config_name)(
        text_config=text_config, vision_config=vision_config,
        image_token_id=ids["<|image|>"], video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )
    hf_model = random_model(getattr(transformers, cls.architectures[0]), config, seed)
    # A random model would write vision placeholders, which break teacher forcing.
    hf_model.generation_config.suppress_tokens = [ids[t] for t in GLM4V_VISION_TOKENS]
    hf_model.generation_config.eos_token_id = [ids[t] for t in ("<|endoftext|>", "<|user|>",
                                                                 "<|observation|>")]
    area = (patch * merge) ** 2 * frames  # one LLM token's pixels, as smart-resize counts them
    image_processor = transformers.Glm4vImageProcessorPil(
        patch_size=patch, merge_size=merge, temporal_patch_size=frames,
        size={"shortest_edge": area * 4, "longest_edge": area * 32},
    )
    processor = cls.hf_classes()[1](image_processor=image_processor, tokenizer=tokenizer,
                                    chat_template=GLM4V_CHAT_TEMPLATE)
    return cls(hf_model, processor, model_id=f"tiny-{cls.name}")


@hookimpl
def register_models(register) -> None:
    register(Glm4v)
