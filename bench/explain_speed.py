"""Explaining every answer token: vlm-audit's engine against the obvious implementation.

Both run in this process, on the same model and the same inputs. The obvious implementation is
what a notebook does per target token: a full forward with output_attentions, retain_grad on every
map, a backward with parameter gradients, then the full R matrix. The engine runs one forward and
batched activation-only vector-Jacobian products, propagating only row p-1.

    python bench/explain_speed.py                       # CPU: MedGemma's layer pattern, reduced width
    python bench/explain_speed.py --device cuda --medgemma   # GPU: random MedGemma-1.5-4B-sized model
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._memory import peak_memory
from explainer import Explainer
from explainer._forward import embed_inputs, forward_embeddings
from explainer.runtime import keep_freed_memory
from phantom.build import TinyGemma3Spec, random_gemma3

CORPUS = ["Where is the nodule? The nodule is in the right upper zone, no effusion, no pneumothorax."]

REDUCED = TinyGemma3Spec(  # MedGemma 1.5's pattern (34 layers, 5 full, 8/4 heads, 16×16 grid), narrower
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=34,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=32,
    sliding_window=1024,
    # SigLIP's shape narrowed the same way (head dim 72, MLP 3.74× the width) on a 448-pixel image
    # (32×32 patches, pooled 2×2 to the 16×16 grid); 20 layers give the vision tower MedGemma 1.5
    # 4B's share of one forward's matrix multiply-adds, 69% (5.5 of 7.9 TFLOP), printed at start
    image_size=448,
    patch_size=14,
    vision_hidden_size=288,
    vision_intermediate_size=1076,
    vision_layers=20,
    vision_heads=4,
    mm_tokens_per_image=256,
    initializer_range=0.1,
    # the vocabulary narrowed with the width: its projection costs about 21% of the layers' compute
    # per token, as MedGemma 1.5 4B's 262,208 × 2,560 head does against its 34 layers
    padded_vocab_size=27_000,
)
# the earlier runs' vision tower, too small to cost anything (--tiny-vision)
TINY_VISION = dict(
    image_size=224, vision_hidden_size=64, vision_intermediate_size=128, vision_layers=2, vision_heads=2
)
MEDGEMMA = TinyGemma3Spec(  # google/medgemma-1.5-4b-it sizes, random weights
    hidden_size=2560,
    intermediate_size=10240,
    num_hidden_layers=34,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    sliding_window=1024,
    image_size=896,
    patch_size=14,
    vision_hidden_size=1152,
    vision_intermediate_size=4304,
    vision_layers=27,
    vision_heads=16,
    mm_tokens_per_image=256,
    padded_vocab_size=262_208,
)


def obvious_relevance(model, inputs, position: int) -> torch.Tensor:
    """Row p-1 of R, the way a notebook does it (forward + backward with parameter gradients + full R)."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    output = model(**inputs, output_attentions=True, use_cache=False)
    for attention in output.attentions:
        attention.retain_grad()
    output.logits[0, position - 1, inputs["input_ids"][0, position]].backward()
    seq_len = inputs["input_ids"].shape[1]
    relevance = torch.eye(seq_len, device=output.logits.device)
    for attention in output.attentions:
        cam = (attention.grad * attention).clamp(min=0).mean(dim=1)[0].float()
        relevance = relevance + cam @ relevance
    model.zero_grad(set_to_none=True)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return relevance[position - 1].detach().cpu()


def forward_flops(model, inputs) -> tuple[int, int]:
    """(vision tower, whole forward) FLOPs of matrix products in one forward, counted by torch.

    Counted with eager attention in the vision tower: the counter has no formula for CPU SDPA.
    """
    vision_attention = model.config.vision_config._attn_implementation
    model.set_attn_implementation({"vision_config": "eager"})
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as vision:
            model.get_image_features(pixel_values=inputs["pixel_values"])
        with torch.no_grad(), FlopCounterMode(display=False) as whole:
            model(**inputs, use_cache=False)
    finally:
        model.set_attn_implementation({"vision_config": vision_attention})
    return vision.get_total_flops(), whole.get_total_flops()


def build(spec: TinyGemma3Spec, device: torch.device, dtype: torch.dtype):
    return random_gemma3(spec, CORPUS, vocab_size=200, device=device, dtype=dtype)  # 200: the tokenizer's


def timed(fn, device: torch.device, repeats: int = 1):
    """(result, best wall time of `repeats` calls): the minimum is the least disturbed by other load."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return result, best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--medgemma", action="store_true", help="MedGemma-1.5-4B-sized random model (GPU)")
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument(
        "--vocab-size", type=int, default=None, help="model vocabulary (default: the spec's, see REDUCED)"
    )
    parser.add_argument(
        "--tiny-vision", action="store_true", help="the earlier runs' negligible vision tower (TINY_VISION)"
    )
    parser.add_argument("--obvious-tokens", type=int, default=None, help="time the obvious way on this many")
    parser.add_argument(
        "--repeats", type=int, default=3, help="best of N timings for the forward and the engine"
    )
    args = parser.parse_args()
    allocator_tuned = keep_freed_memory()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.medgemma else torch.float32
    spec = MEDGEMMA if args.medgemma else REDUCED
    if args.vocab_size is not None:
        spec = dataclasses.replace(spec, padded_vocab_size=args.vocab_size)
    if args.tiny_vision:
        spec = dataclasses.replace(spec, **TINY_VISION)
    model, processor = build(spec, device, dtype)
    explainer = Explainer(model, processor)

    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((512, 512, 3)) * 255).astype("uint8"))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the nodule?"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    answer = " ".join(["right upper zone nodule"] * 8)
    inputs = processor(text=prompt + answer, images=[image], return_tensors="pt")
    inputs = explainer.prepare_inputs(inputs)
    seq_len = inputs["input_ids"].shape[1]
    positions = list(range(seq_len - args.answer_tokens, seq_len))
    n_obvious = args.obvious_tokens or len(positions)
    params = sum(parameter.numel() for parameter in model.parameters())
    print(
        f"model: {'MedGemma-1.5-4B-sized' if args.medgemma else 'reduced MedGemma pattern'}, {params / 1e6:.1f}M params, vocabulary {model.config.text_config.vocab_size:,},"
        f" {dtype}, device {device}; sequence {seq_len} tokens, {len(positions)} answer tokens explained;"
        f" glibc keeps freed memory: {allocator_tuned}"
    )

    vision_flops, forward_flops_total = forward_flops(model, inputs)
    print(
        f"one forward: {forward_flops_total / 1e9:,.1f} GFLOP of matrix products, vision tower"
        f" {vision_flops / forward_flops_total:.0%} of them (MedGemma 1.5 4B: 69%)"
    )

    with torch.no_grad():
        model(**inputs, use_cache=False)  # warm-up
        _, forward_seconds = timed(lambda: model(**inputs, use_cache=False), device, args.repeats)
        embeddings = embed_inputs(model, inputs)
        _, language_seconds = timed(
            lambda: forward_embeddings(model, embeddings, inputs), device, args.repeats
        )
    explainer.relevance(inputs, positions[:2])  # warm-up
    with peak_memory(device) as engine_memory:
        fast, engine_seconds = timed(lambda: explainer.relevance(inputs, positions), device, args.repeats)
    with peak_memory(device) as obvious_memory:
        slow, obvious_seconds = timed(
            lambda: torch.stack([obvious_relevance(model, inputs, p) for p in positions[:n_obvious]]), device
        )
    obvious_seconds *= len(positions) / n_obvious

    engine_rate = len(positions) / engine_seconds
    obvious_rate = len(positions) / obvious_seconds
    per_token = engine_seconds / len(positions)
    print(
        f"one forward pass:            {forward_seconds * 1e3:9.1f} ms   of which the language model"
        f" (from input embeddings) {language_seconds * 1e3:.1f} ms"
    )
    print(
        f"obvious implementation:      {obvious_rate:9.2f} tokens/s   peak memory {obvious_memory['peak_bytes'] / 2**20:8.1f} MiB"
    )
    print(
        f"vlm-audit engine:            {engine_rate:9.2f} tokens/s   peak memory {engine_memory['peak_bytes'] / 2**20:8.1f} MiB"
    )
    print(f"speed-up:                    {engine_rate / obvious_rate:9.2f}x  (goal >= 3.5x)")
    print(
        f"cost per explained token:    {per_token / forward_seconds:9.2f} x one forward  (goal <= 1.3x);"
        f" {per_token / language_seconds:.2f} x the language model's part"
    )
    print(f"max |engine - obvious|:      {(fast[:n_obvious] - slow).abs().max().item():9.2e}")


if __name__ == "__main__":
    main()
