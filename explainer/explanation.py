"""`Explanation`: the answer, its tokens, and the relevance of image cells and prompt words for each target."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from explainer.overlay import heatmap_overlay
from explainer.targets import Target
from vocabulary.map_stats import normalised_entropy, peak_cell, top_fraction_mass
from vocabulary.names import ANSWER, TOKEN, WORD
from vocabulary.regions import mass_shares, standard_regions


@dataclass(frozen=True)
class AnswerToken:
    """One generated token: id, decoded text, position in the full sequence, answer word (or None), and
    its [start, end) characters in `Explanation.answer` (None where not known; clipped to the answer, so
    a token of the stripped outer whitespace is empty)."""

    id: int
    text: str
    position: int
    word: str | None
    span: tuple[int, int] | None = None


@dataclass
class Explanation:
    """What one answer was computed from, per target (answer tokens, answer words, the whole answer).

    `image_maps[k]` is [n_targets, rows, cols] raw relevance of image k's token grid (row-major, no
    normalisation); `text_relevance` is [n_targets, n_prompt_text_tokens] over `prompt_tokens`,
    whose `prompt_token_roles` say "question", "system", "template" or "special".
    """

    question: str
    answer: str
    tokens: list[AnswerToken]
    targets: list[Target]
    image_maps: list[np.ndarray]
    text_relevance: np.ndarray
    prompt_tokens: list[str]
    prompt_token_roles: list[str]
    images: list[Image.Image]
    method: str
    model_id: str
    model_revision: str | None
    timings: dict[str, float] = field(default_factory=dict)
    system_prompt: str | None = None
    image_labels: list[str | None] = field(default_factory=list)  # the text before each image, if any

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.image_maps[0].shape[1:]) if self.image_maps else (0, 0)

    @property
    def words(self) -> list[str]:
        """Answer words that have a target of their own, in answer order."""
        return [target.label for target in self.targets if target.kind == WORD]

    def target_index(self, target: str | int = ANSWER) -> int:
        """Index of a target: "answer", an answer word, or an answer token's index (int)."""
        if isinstance(target, int):
            for index, candidate in enumerate(self.targets):
                if candidate.kind == TOKEN and candidate.positions == (self.tokens[target].position,):
                    return index
            raise KeyError(f"answer token {target} has no target; explain with targets='all'")
        wanted = (ANSWER, "") if target == ANSWER else (WORD, target.lower())
        for index, candidate in enumerate(self.targets):
            if (candidate.kind, candidate.label.lower() if candidate.kind == WORD else "") == wanted:
                return index
        raise KeyError(f"no target {target!r}: the answer {self.answer!r} has targets for words {self.words}")

    def map(self, target: str | int = "answer", image: int = 0) -> np.ndarray:
        """float32 [rows, cols] raw relevance of image `image` for a target."""
        if not 0 <= image < len(self.image_maps):
            raise IndexError(f"image {image} out of range: the prompt has {len(self.image_maps)} image(s)")
        return self.image_maps[image][self.target_index(target)]

    def answer_map(self, image: int = 0) -> np.ndarray:
        """float32 [rows, cols] raw relevance for the whole answer (y = Σ answer-token logits)."""
        return self.map("answer", image)

    def word_map(self, word: str, image: int = 0) -> np.ndarray:
        """float32 [rows, cols] raw relevance for the tokens of an answer word (never a prompt word)."""
        return self.map(word, image)

    def overlay(self, target: str | int = "answer", image: int = 0, *, caption: bool = False) -> Image.Image:
        """Heatmap of a target over the original image, at the original size; `caption=True` adds a band
        under the image naming the method and target (never drawn over the image's corners)."""
        label = target if isinstance(target, str) else self.tokens[target].text.strip()
        return heatmap_overlay(
            self.images[image],
            self.map(target, image),
            caption=f"{self.method}: {label}" if caption else None,
        )

    def region_scores(self, target: str | int = "answer", image: int = 0) -> dict[str, float]:
        """Relevance mass share (positive part) per standard region; lung zones named by patient side."""
        return mass_shares(self.map(target, image), standard_regions(self.grid))

    def map_summary(self, target: str | int = "answer", image: int = 0) -> dict[str, float]:
        """Concentration and peak of a map: normalised entropy, top-10% mass, peak row and column."""
        cell_map = self.map(target, image)
        row, col = peak_cell(cell_map)
        return {
            "entropy": normalised_entropy(cell_map),
            "top10_mass": top_fraction_mass(cell_map),
            "peak_row": row,
            "peak_col": col,
        }

    def _repr_html_(self) -> str:
        """Jupyter's view: the question's words shaded by their relevance for the whole answer, the
        answer's tokens shaded by how much of their relevance lies on the image(s) (hover for the
        share), and the whole answer's overlay per image (at most `NOTEBOOK_IMAGES`)."""
        return notebook_html(self)


NOTEBOOK_IMAGES = 4
_SHADE = "rgba(214, 39, 40, {alpha:.2f})"


def _shaded(texts: list[str], weights: np.ndarray, titles: list[str]) -> str:
    """Spans with a red background whose opacity is each weight over the largest (0 for none)."""
    top = float(weights.max()) if weights.size and weights.max() > 0 else 1.0
    return "".join(
        f'<span title="{html.escape(title)}" style="background:{_SHADE.format(alpha=max(0.0, w) / top)}">'
        f"{html.escape(text)}</span>"
        for text, w, title in zip(texts, weights, titles, strict=True)
    )


def _png_data_uri(image: Image.Image, width: int = 320) -> str:
    thumbnail = image.copy()
    thumbnail.thumbnail((width, width))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def notebook_html(explanation: Explanation) -> str:
    """The HTML `Explanation._repr_html_` returns (a self-contained fragment: images inlined)."""
    parts = [f"<div><p><b>Question</b>: {html.escape(explanation.question)}</p>"]
    answer = explanation.target_index("answer") if explanation.targets else None
    if answer is not None:
        question = [k for k, role in enumerate(explanation.prompt_token_roles) if role == "question"]
        weights = np.clip(np.asarray(explanation.text_relevance[answer])[question], 0, None)
        words = [explanation.prompt_tokens[k] for k in question]
        parts.append(
            "<p><b>Question words, by relevance for the answer</b>: "
            + _shaded(words, weights, [f"{w:.3g}" for w in weights])
            + "</p>"
        )
    token_targets = {
        target.positions[0]: index for index, target in enumerate(explanation.targets) if target.kind == TOKEN
    }
    shares, titles = [], []
    for token in explanation.tokens:
        index = token_targets.get(token.position)
        if index is None:
            shares.append(0.0)
            titles.append("not explained (explain with targets='all')")
            continue
        image = sum(float(np.clip(maps[index], 0, None).sum()) for maps in explanation.image_maps)
        text = float(np.clip(explanation.text_relevance[index], 0, None).sum())
        share = image / (image + text) if image + text > 0 else 0.0
        shares.append(share)
        titles.append(f"{share:.0%} of its relevance on the image(s)")
    parts.append(
        f"<p><b>Answer</b> ({html.escape(explanation.method)}; shade: share of each token's relevance on the "
        "image): "
        + _shaded([token.text for token in explanation.tokens], np.asarray(shares), titles)
        + "</p>"
    )
    if answer is not None:
        figures = [
            f'<figure style="display:inline-block;margin:4px"><img src="{_png_data_uri(explanation.overlay("answer", k))}">'
            f"<figcaption>{html.escape(explanation.image_labels[k] if k < len(explanation.image_labels) and explanation.image_labels[k] else f'image {k + 1}')}</figcaption></figure>"
            for k in range(min(len(explanation.images), NOTEBOOK_IMAGES))
        ]
        parts.append("<div>" + "".join(figures) + "</div>")
        if len(explanation.images) > NOTEBOOK_IMAGES:
            parts.append(
                f"<p>{len(explanation.images) - NOTEBOOK_IMAGES} more images: use explanation.overlay(target, image)</p>"
            )
    return "".join(parts) + "</div>"
