"""Building blocks for tiny, offline, random-weight models of real HF architectures.

No package ships tokenizer files and no hub is reachable in tests, so adapters build their
family's tiny model from a config object and a tokenizer trained here. The words below are
enough for prompts, captions and the bundled benchmark's grammar.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

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
    from tokenizers import decoders

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
