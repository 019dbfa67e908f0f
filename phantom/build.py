"""Offline builders for Gemma3 vision-language models: tokenizer, processor and configs.

Nothing here downloads: the tokenizer is trained with the `tokenizers` library on a small corpus,
the processor is a `Gemma3Processor` with Gemma 3's own chat template, and configs are plain
`Gemma3Config` objects. The phantom models and the test suite's tiny random models use them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    PreTrainedTokenizerFast,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from explainer.loading import ATTENTION_IMPLEMENTATION

CHAT_TEMPLATE = (Path(__file__).with_name("chat_template.jinja")).read_text()

# Gemma's specials in Gemma's order where it has one (pad 0, eos 1, bos 2, unk 3).
SPECIAL_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)

# Text the chat template itself produces; always part of the tokenizer's training corpus.
TEMPLATE_CORPUS = ("user\n", "model\n", "\n\n", "system\n")


def build_tokenizer(
    corpus: Iterable[str], vocab_size: int = 256, *, split_newlines: bool = False
) -> PreTrainedTokenizerFast:
    """Train a small SentencePiece-style BPE tokenizer (Metaspace, like Gemma's) on `corpus`.

    Deterministic for a given corpus and vocabulary size. The specials come first, so their ids
    are fixed: pad 0, eos 1, bos 2, unk 3. `split_newlines` makes every newline its own token, so no
    merge crosses a chat-template line break (e.g. "model", newline, then an answer word); Gemma's
    real tokenizer also keeps newlines apart from words.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"), metaspace])
        if split_newlines
        else metaspace
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator([*TEMPLATE_CORPUS, *corpus], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
            "sot_token": "<start_of_turn>",
            "eot_token": "<end_of_turn>",
        },
    )


def build_processor(
    tokenizer: PreTrainedTokenizerFast, *, image_size: int, mm_tokens_per_image: int
) -> Gemma3Processor:
    """A Gemma3Processor: plain resize to `image_size`², mean/std 0.5, no pan-and-scan, Gemma 3's template."""
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=False,
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=mm_tokens_per_image,
        chat_template=CHAT_TEMPLATE,
    )


@dataclass(frozen=True)
class TinyGemma3Spec:
    """Sizes of a small Gemma3ForConditionalGeneration. Defaults give a ~0.2M-parameter model.

    `layer_types` None means Gemma's own pattern (every `sliding_window_pattern`-th layer full).
    """

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    sliding_window: int = 8
    layer_types: tuple[str, ...] | None = None
    image_size: int = 32
    patch_size: int = 8
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    mm_tokens_per_image: int = 4
    initializer_range: float = 0.02
    # the model's vocabulary; None: the tokenizer's size. A larger one pads the embedding table past
    # the tokenizer's ids, as released checkpoints do (MedGemma's has 262,208 rows).
    padded_vocab_size: int | None = None


def gemma3_config(spec: TinyGemma3Spec, tokenizer: PreTrainedTokenizerFast) -> Gemma3Config:
    """A Gemma3Config of the given sizes whose special token ids match `tokenizer`."""
    ids = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": max(len(tokenizer), spec.padded_vocab_size or 0),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "query_pre_attn_scalar": spec.head_dim,
        "sliding_window": spec.sliding_window,
        "max_position_embeddings": 2048,
        "initializer_range": spec.initializer_range,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": [tokenizer.eos_token_id, ids("<end_of_turn>")],
    }
    if spec.layer_types is not None:
        text_config["layer_types"] = list(spec.layer_types)
    vision_config = {
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
    }
    return Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=spec.mm_tokens_per_image,
        initializer_range=spec.initializer_range,
        image_token_id=ids("<image_soft_token>"),
        boi_token_id=ids("<start_of_image>"),
        eoi_token_id=ids("<end_of_image>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, ids("<end_of_turn>")],
    )


def random_gemma3(
    spec: TinyGemma3Spec,
    corpus: Iterable[str],
    *,
    vocab_size: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Gemma3ForConditionalGeneration, Gemma3Processor]:
    """A randomly initialised Gemma3 vision-language model (attention as `Explainer.from_pretrained`
    sets it, eval mode) and its processor, tokenizer trained on `corpus`; nothing downloads.

    The weights are created on `device` in `dtype`: a MedGemma-sized model (4.3B parameters) is
    initialised on its GPU in seconds instead of through 17 GB of float32 on the host.
    Gemma3 zero-initialises the image projection, which would make every image token the same, so
    it is drawn from N(0, 0.5²) instead.
    """
    tokenizer = build_tokenizer(corpus, vocab_size=vocab_size)
    processor = build_processor(
        tokenizer, image_size=spec.image_size, mm_tokens_per_image=spec.mm_tokens_per_image
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Gemma3ForConditionalGeneration._from_config(
            gemma3_config(spec, tokenizer), attn_implementation=ATTENTION_IMPLEMENTATION, dtype=dtype
        )
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)
    return model.eval(), processor
