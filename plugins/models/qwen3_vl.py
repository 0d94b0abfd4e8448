"""Qwen3-VL (dense): Qwen2-VL's merged-patch grids, plus DeepStack.

Grids. The processor (Qwen2-VL's image processor with 16-pixel patches) smart-resizes each
image whole to multiples of ``patch_size * merge_size`` and orders the patches so that each
``m x m`` merge group is contiguous; image ``i`` with ``image_grid_thw[i] = (t, H, W)`` is
``t`` row-major grids of ``(H // m, W // m)`` LLM tokens (``<|image_pad|>``), m =
``vision_config.spatial_merge_size``. The vision blocks (``model.model.visual.blocks``) attend
within each image in patch order (no windows), so per-patch scores of any block average over
merge groups onto the grid, as Qwen2-VL's.

DeepStack. The blocks listed in ``vision_config.deepstack_visual_indexes`` feed, besides the
next block, a merger of their own; its tokens (same merge groups, same grid cells) are added
to the residual stream at the image positions right after decoder layers ``0 .. k-1`` (k
such blocks). For the methods:

- Grad-CAM (vision layers): every block maps onto the grid the same way; the default is the
  last block, which the main merger reads. A DeepStack block's gradients also arrive through
  its own merger, i.e. from the decoder layer it is injected after.
- Logit lens and other readers of decoder layer outputs: a layer's recorded output (a hook
  on the layer) is the residual *before* that layer's injection; the next layer reads it
  with the injected features. The final normed states (TAM, the logits every method
  explains) come after every injection (the real checkpoints inject after their first
  three decoder layers).
- Attention and rollout read attention weights only; rollout takes the residual as the
  identity, so features injected mid-stream are not traced back on their own, but they
  enter at the image positions, so the maps stay on the same cells.
- LRP (gradient x input at the first decoder layer's input) attributes what flows through
  the image embeddings; the share that enters through the DeepStack injections reaches no
  input it is measured at, so relevance is conserved only up to that share.
"""

from __future__ import annotations

from mmxai.hookspecs import hookimpl
from mmxai.plugins.models.qwen2_vl import QwenLike
from mmxai.plugins.models.tiny import (
    QWEN_SPECIAL_TOKENS,
    QWEN_VISION_TOKENS,
    TINY_TEXT,
    random_model,
    train_tokenizer,
)

#: Qwen3-VL-Instruct's chat template, byte for byte (5292 bytes, SHA-256 3636d0f0...).
QWEN3_VL_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501


class Qwen3VL(QwenLike):
    """Qwen3-VL: ``model.model.visual.blocks`` in patch order, a 2x2 merger, DeepStack."""

    name = "qwen3-vl"
    architectures = ("Qwen3VLForConditionalGeneration",)
    processor_name = "Qwen3VLProcessor"
    config_name = "Qwen3VLConfig"
    default_chat_template = QWEN3_VL_CHAT_TEMPLATE

    @classmethod
    def tiny(cls, seed: int = 0) -> Qwen3VL:
        return tiny_qwen3_vl(cls, seed)


def tiny_qwen3_vl(cls: type[Qwen3VL], seed: int = 0) -> Qwen3VL:
    """Text hidden 64 x 2 layers, vision hidden 32 x 2 blocks on 16-pixel patches (as the
    real checkpoints), block 0 a DeepStack block injected after decoder layer 0; 4-32 LLM
    tokens per image; the real template."""
    import transformers

    tokenizer = train_tokenizer(QWEN_SPECIAL_TOKENS, extra_text="user assistant system",
                                eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                chat_template=QWEN3_VL_CHAT_TEMPLATE)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    patch, merge = 16, 2
    text_config = dict(
        TINY_TEXT, vocab_size=len(tokenizer), head_dim=16,
        # interleaved mrope over head_dim / 2 = 8 rotary frequencies (t, h, w)
        rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                         "mrope_section": [4, 2, 2], "mrope_interleaved": True},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                         patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2,
                         out_hidden_size=TINY_TEXT["hidden_size"], num_position_embeddings=64,
                         deepstack_visual_indexes=[0])
    config = getattr(transformers, cls.config_name)(
        text_config=text_config, vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    hf_model = random_model(getattr(transformers, cls.architectures[0]), config, seed)
    # A random model would write vision placeholders, which break teacher forcing.
    hf_model.generation_config.suppress_tokens = [ids[t] for t in QWEN_VISION_TOKENS]
    hf_model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    factor = patch * merge
    image_processor = transformers.Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=merge, temporal_patch_size=2,
        size={"shortest_edge": factor * factor * 4, "longest_edge": factor * factor * 32},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = cls.hf_classes()[1](image_processor=image_processor, tokenizer=tokenizer,
                                    chat_template=QWEN3_VL_CHAT_TEMPLATE)
    return cls(hf_model, processor, model_id=f"tiny-{cls.name}")


@hookimpl
def register_models(register) -> None:
    register(Qwen3VL)
