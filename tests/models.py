"""Tiny random Gemma3 vision-language models built from configs (nothing downloads)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from phantom.build import TinyGemma3Spec, random_gemma3

CORPUS = (
    "You are an expert radiologist.",
    "Where is the nodule? The nodule is in the right upper zone.",
    "Is there evidence of pneumonia? Yes, consolidation in the right lower zone, no effusion.",
    "Compare the two images. The left middle zone opacity has grown.",
)


class TinyVLM:
    """A random Gemma3ForConditionalGeneration with its processor."""

    def __init__(self, spec: TinyGemma3Spec, seed: int = 0) -> None:
        self.model, self.processor = random_gemma3(spec, CORPUS, vocab_size=160, seed=seed)
        self.tokenizer = self.processor.tokenizer
        self.config = self.model.config

    def inputs(self, images, question: str, answer: str = "", system: str | None = None):
        """Processor inputs of the chat prompt with `answer` appended (the full sequence)."""
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        if system:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.processor(text=prompt + answer, images=list(images), return_tensors="pt")


def random_image(seed: int, size: tuple[int, int] = (50, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))
