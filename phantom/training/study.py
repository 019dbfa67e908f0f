"""The study control: a tiny multi-image Gemma3 that reads labelled slice stacks and prior/current pairs.

    python -m phantom.training.study    # warm start from the positive control, ~13 min on one thread

It answers the three questions of `phantom.studies` ("Is there a nodule?" and "In which part of the
volume is the nodule?" over 9 labelled slices, "Has the nodule grown since the prior?" over a prior
and a current radiograph) from the nodule's image tokens through attention, as the positive
control does on one image: the positive control's routing terms hold for every image of the
prompt (the answer rows read the nodule's cells, no other route carries image content), in a
prior/current pair each image's nodule is read by heads of its own, and every image token reads its
own image's label ("slice 4 of 9", "prior") in the first language layer, which is how it knows
which image it is in.

Its own module, not a recipe of `phantom.training.train`: that trainer's data, batches, evidence
footprints and held-out report are built around one 64-token image and `phantom.sample`'s tasks;
here a row holds 2 or 9 images, the prompt comes from the explainer's `build_prompt` with image
labels, volumes and pairs differ in length (so batches hold one kind each) and the vocabulary is
new (slice numbers, "prior", "current"). The routing terms, cross-entropy and saving are shared.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from torch import nn
from transformers import Gemma3ForConditionalGeneration, Gemma3Processor

from explainer.generation import build_prompt
from phantom import MODELS_DIR
from phantom.build import build_processor, build_tokenizer, gemma3_config
from phantom.studies import KINDS, N_SLICES, QUESTIONS, THIRDS, StudyCase, sample_studies
from phantom.training.data import GRID, IMAGE_SIZE, PHANTOM_SPEC, footprint
from phantom.training.evaluate import MODEL_INPUTS, exact_from_tokens, greedy_answers
from phantom.training.recipes import HELDOUT_SEED, STRICT_ROUTING, VALIDATION_SEED
from phantom.training.routing import (
    RoutingWeights,
    answer_rows,
    capture_vision_attention,
    cell_keys,
    routing_loss,
)
from phantom.training.train import answer_cross_entropy, load_model, save

NAME = "study"
INIT = "positive"
SEED = 5  # training studies are drawn with seed 500; held out: HELDOUT_SEED (20,000) and above
VOCAB_SIZE = 160
CELLS = GRID * GRID
# the phantom's sizes; the sliding window spans a whole 9-slice prompt (~680 tokens), as the
# positive control's spans its ~90 tokens
STUDY_SPEC = replace(PHANTOM_SPEC, sliding_window=1024)


# the positive control's routing; image tokens of language layer 0 read their own image's label; in a
# prior/current pair, query heads 0–1 (key/value head 0) read the prior's nodule, heads 2–3 the current's
STUDY_ROUTING = replace(STRICT_ROUTING, label=0.5, image_heads=((0, 1), (2, 3)))


@dataclass(frozen=True)
class StudyTraining:
    """Optimiser settings, batch sizes per kind, the share of volume batches, and the stopping rule:
    stop after `max_steps`, or once teacher-forced exact accuracy on the validation studies of every
    kind reaches `stop_accuracy` (checked every `eval_every` steps, not before `min_steps`)."""

    max_steps: int = 800
    lr: float = 1e-3
    warmup: int = 50
    volume_batch: int = 8
    longitudinal_batch: int = 32
    volume_share: float = 0.4
    volume_pool: int = 2_000
    longitudinal_pool: int = 4_000
    validation: int = 96
    min_steps: int = 200
    stop_accuracy: float = 0.97
    eval_every: int = 100
    routing: RoutingWeights = STUDY_ROUTING


def answers() -> list[str]:
    """Every answer the study tasks use."""
    return [f"{third} third" for third in THIRDS] + ["yes", "no"]


def corpus() -> list[str]:
    """Tokenizer corpus: the text pieces between special tokens that the study prompts produce."""
    labels = [f"slice {k} of {N_SLICES}" for k in range(1, N_SLICES + 1)] + ["prior", "current"]
    pieces = [f"\nuser\n{label}\n\n" for label in labels] + [f"\n\n{label}\n\n" for label in labels]
    pieces += [f"\n\n{question}" for question in QUESTIONS.values()]
    return pieces + [f"\nmodel\n{answer}" for answer in answers()]


def build_study_processor() -> Gemma3Processor:
    """The study model's Gemma3Processor: the phantom's image processing, a tokenizer for `corpus()`."""
    tokenizer = build_tokenizer(corpus(), VOCAB_SIZE, split_newlines=True)
    return build_processor(tokenizer, image_size=IMAGE_SIZE, mm_tokens_per_image=CELLS)


@dataclass
class EncodedStudies:
    """Studies of one kind as tensors, right-padded to a common length L; n images per study.

    input_ids, attention_mask, token_type_ids, labels: [N, L] (labels -100 outside the answer and
    its <end_of_turn>); pixels: [N, n, 64, 64] uint8, the processor's resized grey images;
    object_cells: [N, n * 64] bool, the nodule's footprint in each image, in prompt order;
    image_index / label_index: [N, L], k + 1 on image k's soft tokens / its label's words, else 0.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    labels: torch.Tensor
    pixels: torch.Tensor
    object_cells: torch.Tensor
    image_index: torch.Tensor
    label_index: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, index: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        """Model inputs (pixel_values [B * n, 3, 64, 64], images in prompt order), labels and cells."""
        pixels = self.pixels[index].flatten(0, 1).float() / 127.5 - 1.0
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "token_type_ids": self.token_type_ids[index],
            "pixel_values": pixels.unsqueeze(1).expand(-1, 3, -1, -1).contiguous(),
            "labels": self.labels[index],
            "object_cells": self.object_cells[index],
            "image_index": self.image_index[index],
            "label_index": self.label_index[index],
        }


def encode_studies(cases: list[StudyCase], processor: Gemma3Processor) -> EncodedStudies:
    """Prompt (the explainer's `build_prompt`, labels before images) + answer + <end_of_turn>, tokenized
    once per distinct text, and every image through `processor.image_processor`.

    Raises ValueError for mixed image counts, or if the prompt's tokens are not a prefix of the full
    sequence's.
    """
    if len({len(case.images) for case in cases}) != 1:
        raise ValueError("encode studies of one kind at a time: every study needs the same image count")
    blank = [Image.new("RGB", cases[0].images[0].size)] * len(cases[0].images)
    texts: dict[tuple, tuple[list[int], list[int], int, tuple[list[int], list[int]]]] = {}
    for case in cases:
        key = (tuple(case.image_labels), case.question, case.answer)
        if key not in texts:
            prompt = build_prompt(processor, blank, case.question, image_labels=case.image_labels)
            full = processor(
                text=prompt.text + case.answer + "<end_of_turn>", images=blank, return_tensors="np"
            )
            prefix, ids = prompt.inputs["input_ids"][0].tolist(), full["input_ids"][0].tolist()
            if ids[: len(prefix)] != prefix:
                raise ValueError(f"prompt tokens are not a prefix of prompt + answer for {key!r}")
            texts[key] = (ids, full["token_type_ids"][0].tolist(), len(prefix), _indices(ids, processor))
    images = [image for case in cases for image in case.images]
    values = np.concatenate(
        [
            np.asarray(
                processor.image_processor(images[start : start + 512], return_tensors="np")["pixel_values"]
            )
            for start in range(0, len(images), 512)
        ]
    )  # [N * n, 3, 64, 64] in [-1, 1], grey
    grey = np.round((values[:, 0] + 1.0) * 127.5)
    if not np.allclose(grey / 127.5 - 1.0, values[:, 0], atol=1e-5):
        raise ValueError("processor output is not an 8-bit grey image; uint8 storage would lose it")
    rows = [texts[(tuple(case.image_labels), case.question, case.answer)] for case in cases]
    length, n = max(len(ids) for ids, *_ in rows), len(rows)
    input_ids = torch.full((n, length), processor.tokenizer.pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros((n, length), dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    labels = torch.full((n, length), -100, dtype=torch.long)
    image_index = torch.zeros((n, length), dtype=torch.long)
    label_index = torch.zeros((n, length), dtype=torch.long)
    for i, (ids, types, prompt_length, (images_at, labels_at)) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        token_type_ids[i, : len(ids)] = torch.tensor(types)
        attention_mask[i, : len(ids)] = 1
        labels[i, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
        image_index[i, : len(ids)] = torch.tensor(images_at)
        label_index[i, : len(ids)] = torch.tensor(labels_at)
    side = cases[0].images[0].size[0]
    cells = [np.concatenate([footprint(box, side) for box in case.evidence_boxes]) for case in cases]
    return EncodedStudies(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        labels=labels,
        pixels=torch.from_numpy(grey.astype(np.uint8)).reshape(
            n, len(cases[0].images), IMAGE_SIZE, IMAGE_SIZE
        ),
        object_cells=torch.from_numpy(np.stack(cells)),
        image_index=image_index,
        label_index=label_index,
    )


def _indices(ids: list[int], processor: Gemma3Processor) -> tuple[list[int], list[int]]:
    """Per token: k + 1 on image k's soft tokens (else 0), and k + 1 on the words of image k's label,
    the text between the previous image's end (or the user turn's first line break) and its start."""
    tokenizer = processor.tokenizer
    soft, start, end = (
        tokenizer.convert_tokens_to_ids(t)
        for t in ("<image_soft_token>", "<start_of_image>", "<end_of_image>")
    )
    newline = tokenizer.convert_tokens_to_ids("\n")
    images_at, labels_at = [0] * len(ids), [0] * len(ids)
    image, after = 0, ids.index(newline) + 1
    for position, token in enumerate(ids):
        if token == start:
            for word in range(after, position):
                if ids[word] != newline:
                    labels_at[word] = image + 1
        elif token == soft:
            images_at[position] = image + 1
        elif token == end:
            image, after = image + 1, position + 1
    return images_at, labels_at


def warm_start(processor: Gemma3Processor, init: Path, seed: int) -> Gemma3ForConditionalGeneration:
    """A study-sized model holding `init`'s weights (vision tower, projector, language layers); token
    embeddings are copied for the tokens both vocabularies share and freshly drawn for the others."""
    source = load_model(init)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration._from_config(
        gemma3_config(STUDY_SPEC, processor.tokenizer), attn_implementation="eager"
    )
    old = source.model.language_model.embed_tokens.weight.detach()
    state = {
        k: v
        for k, v in source.state_dict().items()
        if not k.endswith(("embed_tokens.weight", "lm_head.weight"))
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"model.language_model.embed_tokens.weight", "lm_head.weight"}:
        raise ValueError(f"weights do not match: missing {missing}, unexpected {unexpected}")
    old_vocab = load_vocabulary(init)
    with torch.no_grad():
        new = model.model.language_model.embed_tokens.weight
        new.normal_(0.0, float(old.std()))
        for token, index in processor.tokenizer.get_vocab().items():
            if token in old_vocab:
                new[index] = old[old_vocab[token]]
    return model


def load_vocabulary(folder: Path) -> dict[str, int]:
    """Token string → id of a saved tokenizer, added (special) tokens included."""
    saved = json.loads((folder / "tokenizer.json").read_text())
    return saved["model"]["vocab"] | {added["content"]: added["id"] for added in saved["added_tokens"]}


@torch.no_grad()
def validation_exact(model: nn.Module, encoded: EncodedStudies, batch_size: int = 16) -> float:
    """Teacher-forced exact accuracy (every answer token right)."""
    correct, mask = [], []
    for start in range(0, len(encoded), batch_size):
        batch = encoded.batch(slice(start, start + batch_size))
        logits = model(**{k: batch[k] for k in MODEL_INPUTS}).logits
        predicted = torch.full_like(batch["labels"], -1)
        predicted[:, 1:] = logits[:, :-1].argmax(-1)
        correct.append(predicted == batch["labels"])
        mask.append(batch["labels"] != -100)
    return exact_from_tokens(torch.cat(correct), torch.cat(mask))


@torch.no_grad()
def answer_attention(
    model: nn.Module, encoded: EncodedStudies, end_of_turn_id: int, batch_size: int = 16
) -> list[float]:
    """Per language layer: answer rows' head-mean attention mass on the nodule's cells (all images)."""
    sums, count = None, 0
    for start in range(0, len(encoded), batch_size):
        batch = encoded.batch(slice(start, start + batch_size))
        out = model(**{k: batch[k] for k in MODEL_INPUTS}, output_attentions=True)
        rows = answer_rows(batch["labels"], end_of_turn_id) & batch["object_cells"].any(1)[:, None]
        keys = cell_keys(batch["token_type_ids"], batch["object_cells"])
        masses = torch.stack([(a.mean(1) * keys[:, None, :]).sum(-1)[rows].sum() for a in out.attentions])
        sums = masses if sums is None else sums + masses
        count += int(rows.sum())
    return (sums / max(count, 1)).tolist()


def _lr_factor(step: int, settings: StudyTraining) -> float:
    """Linear warm-up, then a cosine decay to 10% at `max_steps`."""
    if step < settings.warmup:
        return (step + 1) / settings.warmup
    progress = min(1.0, (step - settings.warmup) / max(1, settings.max_steps - settings.warmup))
    return 0.1 + 0.45 * (1.0 + float(np.cos(np.pi * progress)))


def train(
    model: Gemma3ForConditionalGeneration,
    processor: Gemma3Processor,
    settings: StudyTraining,
    seed: int,
    *,
    log_every: int,
    max_steps: int | None,
) -> dict:
    """Alternate volume and longitudinal batches (`volume_share` of the steps are volumes)."""
    started = time.time()
    end_of_turn_id = processor.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    pools = {
        "volume": encode_studies(sample_studies(settings.volume_pool, seed, "volume"), processor),
        "longitudinal": encode_studies(
            sample_studies(settings.longitudinal_pool, seed, "longitudinal"), processor
        ),
    }
    validation = {
        kind: encode_studies(sample_studies(settings.validation, VALIDATION_SEED, kind), processor)
        for kind in KINDS
    }
    print(f"studies encoded in {time.time() - started:.0f}s", flush=True)
    batch_sizes = {"volume": settings.volume_batch, "longitudinal": settings.longitudinal_batch}
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, settings))
    order = torch.Generator().manual_seed(seed)
    cursors = {kind: (torch.randperm(len(pool), generator=order), 0) for kind, pool in pools.items()}
    steps = settings.max_steps if max_steps is None else min(settings.max_steps, max_steps)
    running: dict[str, list[float]] = {}
    val: dict[str, float] = {}
    stopped_early, step = False, 0
    model.train()
    for step in range(1, steps + 1):
        kind = "volume" if torch.rand((), generator=order) < settings.volume_share else "longitudinal"
        permutation, cursor = cursors[kind]
        size = batch_sizes[kind]
        if cursor + size > len(pools[kind]):
            permutation, cursor = torch.randperm(len(pools[kind]), generator=order), 0
        batch = pools[kind].batch(permutation[cursor : cursor + size])
        cursors[kind] = (permutation, cursor + size)
        with capture_vision_attention(model) as vision_attentions:
            out = model(**{k: batch[k] for k in MODEL_INPUTS}, output_attentions=True)
        loss = answer_cross_entropy(out.logits, batch["labels"])
        terms = {f"{kind}_ce": float(loss.detach())}
        extra, extra_terms = routing_loss(
            out.attentions,
            vision_attentions,
            batch,
            settings.routing,
            end_of_turn_id,
            cells_per_image=CELLS if kind == "longitudinal" else None,
        )
        loss = loss + extra
        terms.update({f"{kind}_{name}": value for name, value in extra_terms.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        for name, value in terms.items():
            running.setdefault(name, []).append(value)
        if step % log_every == 0:
            means = " ".join(f"{k} {np.mean(v):.3f}" for k, v in sorted(running.items()))
            print(f"step {step} {means} ({time.time() - started:.0f}s)", flush=True)
            running = {}
        if step % settings.eval_every == 0 or step == steps:
            model.eval()
            val = {kind: validation_exact(model, encoded) for kind, encoded in validation.items()}
            model.train()
            print(f"step {step} validation exact {val} ({time.time() - started:.0f}s)", flush=True)
            if step >= settings.min_steps and min(val.values()) >= settings.stop_accuracy:
                stopped_early = step < steps
                break
    model.eval()
    record = asdict(settings)
    record.update(steps=step, data_seed=seed, stopped_early=stopped_early, validation_exact=val)
    record["wall_s"] = round(time.time() - started, 1)
    return record


def generate_answers(
    model: nn.Module, processor: Gemma3Processor, cases: list[StudyCase], batch_size: int = 16
) -> list[str]:
    """Greedy answers to studies of one kind, each prompt with its labelled images (`greedy_answers`)."""
    prompts = [
        (build_prompt(processor, c.images, c.question, image_labels=c.image_labels).text, c.images)
        for c in cases
    ]
    return greedy_answers(model, processor, prompts, batch_size)


def heldout_report(model: Gemma3ForConditionalGeneration, processor: Gemma3Processor, n: int = 200) -> dict:
    """Greedy exact accuracy on `n` held-out studies of each kind, per task, and the answer rows'
    attention on the nodule per language layer."""
    end_of_turn_id = processor.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    report: dict = {"cases_per_kind": n, "seed": HELDOUT_SEED}
    for kind in KINDS:
        cases = sample_studies(n, HELDOUT_SEED, kind)
        answers = generate_answers(model, processor, cases)
        right = [a == c.answer for a, c in zip(answers, cases, strict=True)]
        groups = {_group(c) for c in cases}
        report[kind] = {
            "exact_accuracy": float(np.mean(right)),
            "exact_accuracy_by_group": {
                group: float(np.mean([r for r, c in zip(right, cases, strict=True) if _group(c) == group]))
                for group in sorted(groups)
            },
            "answer_attention_on_nodule_per_layer": [
                round(m, 4) for m in answer_attention(model, encode_studies(cases, processor), end_of_turn_id)
            ],
        }
        print(kind, json.dumps(report[kind]), flush=True)
    return report


def _group(case: StudyCase) -> str:
    return case.task if case.task == "locate" else f"{case.task}:{case.answer}"


def run(*, out: Path | None, log_every: int, max_steps: int | None, threads: int) -> dict:
    """Warm-start from the positive control, train on studies, evaluate and save."""
    torch.set_num_threads(threads)
    started, cpu_started = time.time(), time.process_time()
    processor = build_study_processor()
    model = warm_start(processor, MODELS_DIR / INIT, SEED)
    settings = StudyTraining()
    torch.manual_seed(SEED)
    record = train(model, processor, settings, SEED * 100, log_every=log_every, max_steps=max_steps)
    train_wall, train_cpu = time.time() - started, time.process_time() - cpu_started
    print("evaluating on held-out studies ...", flush=True)
    heldout = heldout_report(model, processor)
    init_report = json.loads((MODELS_DIR / INIT / "training_report.json").read_text())
    report = {
        "name": NAME,
        "command": " ".join(["python -m phantom.training.study", *sys.argv[1:]]),
        "seed": SEED,
        "init": INIT,
        "chain": [*init_report["chain"], NAME],
        "steps": record["steps"],
        "training_wall_s": round(train_wall, 1),
        "training_cpu_s": round(train_cpu, 1),
        "threads": threads,
        "stages": [record],
        "heldout": heldout,
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "machine": platform.machine(),
    }
    save(model, processor, out or MODELS_DIR / NAME, report)
    print(f"saved {out or MODELS_DIR / NAME} after {time.time() - started:.0f}s", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: phantom/models/study)"
    )
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--max-steps", type=int, default=None, help="cap the steps (for quick trials)")
    parser.add_argument(
        "--threads", type=int, default=1, help="1: a second thread stalls on a shared machine"
    )
    args = parser.parse_args(argv)
    run(out=args.out, log_every=args.log_every, max_steps=args.max_steps, threads=args.threads)


if __name__ == "__main__":
    main()
