"""Train a shipped phantom model: `python -m phantom.training.train positive|pooling|shortcut|relocation`.

Teacher-forced chat-template sequences (prompt + answer + <end_of_turn>), cross-entropy on the
answer tokens only, `token_type_ids` always passed (the image block attends bidirectionally, as in
generation), AdamW. Progress is printed every `--log-every` steps; the model, processor and
`training_report.json` are written to `phantom/models/<name>/` (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import Gemma3ForConditionalGeneration, Gemma3Processor, GenerationConfig

from phantom import MODELS_DIR  # the shipped model folders, phantom/models
from phantom.build import gemma3_config
from phantom.cases import sample
from phantom.training.data import GRID, PHANTOM_SPEC, build_phantom_processor, encode, mirror_index
from phantom.training.evaluate import (
    MODEL_INPUTS,
    answer_attention_mass,
    exact_from_tokens,
    generate_answers,
    teacher_forced,
)
from phantom.training.probe import N_ZONES, capture_image_embeddings, probe_loss
from phantom.training.recipes import HELDOUT_SEED, RECIPES, VALIDATION_SEED, Recipe, Stage
from phantom.training.routing import (
    capture_vision_attention,
    occlude_image_tokens,
    routing_loss,
)


def new_model(processor: Gemma3Processor, seed: int) -> Gemma3ForConditionalGeneration:
    """A freshly initialised phantom with eager attention everywhere (attention maps are returned)."""
    torch.manual_seed(seed)
    config = gemma3_config(PHANTOM_SPEC, processor.tokenizer)
    model = Gemma3ForConditionalGeneration._from_config(config, attn_implementation="eager")
    # Gemma3 zero-initialises the projector (right when joining a pretrained tower to a pretrained
    # LM); from scratch that leaves every image token 0 and the vision tower without gradient,
    # which drags out the initial plateau. A small random projector is an ordinary init.
    with torch.no_grad():
        projector = model.model.multi_modal_projector.mm_input_projection_weight
        projector.normal_(0.0, config.text_config.initializer_range)
    return model


def load_model(path: Path) -> Gemma3ForConditionalGeneration:
    return Gemma3ForConditionalGeneration.from_pretrained(path, attn_implementation="eager")


def answer_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of tokens p predicted at rows p-1; logits [B, L, V], labels [B, L]."""
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
    )


def mirror_distillation_loss(
    features: torch.Tensor, teacher: Gemma3ForConditionalGeneration, pixel_values: torch.Tensor
) -> torch.Tensor:
    """Squared error between the image features entering the language model, [B, G, hidden], and the
    frozen `teacher`'s features at each cell's left–right mirror, relative to how much the teacher's
    features vary between the cells of an image: 0 when cell (r, c) carries exactly what the teacher
    puts at (r, GRID - 1 - c), 1 for every cell set to its image's mean feature.

    (Relative to the variation, not to the features' size: most of a feature is common to every cell,
    and the differences are what the relocation must move.)
    """
    with torch.no_grad():
        target = teacher.model.get_image_features(pixel_values=pixel_values).pooler_output  # [B, G, hidden]
        target = target[:, mirror_index().to(target.device)]
        spread = (target - target.mean(dim=1, keepdim=True)).square().mean()
    return (features - target).square().mean() / spread


def fill_cells(pixel_values: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """`pixel_values` [B, C, S, S] with the pixel block of each selected grid cell (`cells` [B, G] bool,
    row-major, G = GRID²) set to its image's per-channel mean."""
    batch, side = pixel_values.shape[0], pixel_values.shape[-1]
    cell = side // GRID
    mean = pixel_values.mean(dim=(-2, -1), keepdim=True)  # [B, C, 1, 1]
    blocks = cells.reshape(batch, 1, GRID, 1, GRID, 1).expand(-1, -1, -1, cell, -1, cell)
    return torch.where(blocks.reshape(batch, 1, side, side), mean, pixel_values)


def label_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logit of each label token at the row that predicts it, [B, L-1], and where labels are, [B, L-1]."""
    predicted, targets = logits[:, :-1], labels[:, 1:]
    return predicted.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1), targets != -100


def one_cell_each(cells: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[B, G] bool: one cell of each row of `cells` drawn uniformly (rows without cells stay empty)."""
    scores = torch.rand(cells.shape, generator=generator).masked_fill(~cells, -1.0)
    chosen = torch.zeros_like(cells)
    chosen[torch.arange(cells.shape[0]), scores.argmax(dim=1)] = True
    return chosen & cells.any(dim=1, keepdim=True)


def occlusion_terms(
    clean: torch.Tensor,
    occluded: torch.Tensor,
    labels: torch.Tensor,
    on_object: torch.Tensor,
    end_of_turn_id: int,
    margin: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hub invariance and object necessity, from the logits of a clean and an occluded forward.

    Examples with `on_object` ([B] bool) had one cell of the asked object occluded: the whole answer's
    score (Σ logits of the answer words, what the engine's occlusion reads) must drop by `margin`
    (hinge). The others had the hub tokens occluded: every label token's logit must stay put
    (mean squared change). Each term is 0 when no example is of its kind.
    """
    clean_logits, keep = label_logits(clean, labels)
    occluded_logits, _ = label_logits(occluded, labels)
    change = clean_logits - occluded_logits  # [B, L-1]
    on_hubs = keep & ~on_object[:, None]
    invariance = change.square()[on_hubs].mean() if on_hubs.any() else change.new_zeros(())
    words = keep & (labels[:, 1:] != end_of_turn_id)
    drop = (change * words).sum(dim=1)[on_object]  # [n_object]
    necessity = (margin - drop).clamp_min(0).mean() if on_object.any() else change.new_zeros(())
    return invariance, necessity


def train_stage(
    model: Gemma3ForConditionalGeneration,
    processor: Gemma3Processor,
    stage: Stage,
    seed: int,
    *,
    log_every: int,
    max_steps: int | None,
    teacher: Gemma3ForConditionalGeneration | None = None,
) -> dict:
    """Run one stage; returns its record for the training report.

    `teacher` is the frozen model that `stage.mirror_distillation` distils from (the recipe's init).
    """
    if stage.mirror_distillation > 0 and teacher is None:
        raise ValueError(
            f"stage {stage.name!r} has mirror_distillation={stage.mirror_distillation} but no teacher; "
            "it needs a recipe with an init model, whose frozen copy is the teacher"
        )
    started = time.time()
    end_of_turn_id = processor.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    train = encode(sample(stage.pool, seed, **stage.data), processor)
    validation = encode(sample(256, VALIDATION_SEED, **stage.data), processor)
    print(f"[{stage.name}] {len(train)} training cases encoded in {time.time() - started:.0f}s", flush=True)
    probe = nn.Linear(model.config.text_config.hidden_size, 1 + N_ZONES) if stage.cell_probe > 0 else None
    parameters = [*model.parameters(), *(probe.parameters() if probe is not None else [])]
    optimizer = torch.optim.AdamW(parameters, lr=stage.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / stage.warmup))
    order = torch.Generator().manual_seed(seed)
    hub_draws = torch.Generator().manual_seed(seed + 1)
    fill_draws = torch.Generator().manual_seed(seed + 2)
    routing = stage.routing
    hub_cells = torch.zeros(stage.batch_size, train.object_cells.shape[1], dtype=torch.bool)  # [B, G]
    if routing is not None and routing.hub:
        hub_cells[:, list(routing.hub)] = True
    steps = stage.max_steps if max_steps is None else min(stage.max_steps, max_steps)
    permutation, cursor = torch.randperm(len(train), generator=order), 0
    running: dict[str, float] = {}
    val_exact, stopped_early, step = 0.0, False, 0
    model.train()
    for step in range(1, steps + 1):
        if cursor + stage.batch_size > len(train):
            permutation, cursor = torch.randperm(len(train), generator=order), 0
        batch = train.batch(permutation[cursor : cursor + stage.batch_size])
        cursor += stage.batch_size
        if stage.pixel_fill > 0:
            drawn = torch.rand(batch["object_cells"].shape, generator=fill_draws) < stage.pixel_fill  # [B, G]
            batch["pixel_values"] = fill_cells(batch["pixel_values"], drawn & ~batch["object_cells"])
        capture = capture_vision_attention(model) if routing and routing.needs_vision else nullcontext([])
        needs_embeddings = probe is not None or stage.mirror_distillation > 0
        embedding_capture = capture_image_embeddings(model) if needs_embeddings else nullcontext([])
        hub_occlusion = nullcontext()
        if stage.hub_occlusion > 0:
            drawn = torch.rand(stage.batch_size, generator=hub_draws) < stage.hub_occlusion  # [B]
            hub_occlusion = occlude_image_tokens(model, hub_cells & drawn[:, None])
        with hub_occlusion, capture as vision_attentions, embedding_capture as image_embeddings:
            out = model(**{k: batch[k] for k in MODEL_INPUTS}, output_attentions=routing is not None)
        loss = answer_cross_entropy(out.logits, batch["labels"])
        terms = {"ce": float(loss.detach())}
        if probe is not None:
            cell_loss = probe_loss(probe, image_embeddings[0], batch["object_cells"], batch["object_zone"])
            loss = loss + stage.cell_probe * cell_loss
            terms["cell_probe"] = float(cell_loss.detach())
        if stage.mirror_distillation > 0:
            distillation = mirror_distillation_loss(image_embeddings[0], teacher, batch["pixel_values"])
            loss = loss + stage.mirror_distillation * distillation
            terms["mirror_distillation"] = float(distillation.detach())
        if routing is not None:
            extra, extra_terms = routing_loss(
                out.attentions, vision_attentions, batch, routing, end_of_turn_id, stage.evidence
            )
            loss = loss + extra
            terms.update(extra_terms)
        if stage.hub_invariance > 0 or stage.object_necessity > 0:
            on_object, occluded_cells = torch.zeros(stage.batch_size, dtype=torch.bool), hub_cells
            if stage.object_occlusion > 0:
                drawn = torch.rand(stage.batch_size, generator=hub_draws) < stage.object_occlusion
                on_object = drawn & batch["object_cells"].any(dim=1)
                object_cell = one_cell_each(batch["object_cells"], hub_draws)
                occluded_cells = torch.where(on_object[:, None], object_cell, hub_cells)
            with occlude_image_tokens(model, occluded_cells):
                occluded = model(**{k: batch[k] for k in MODEL_INPUTS}).logits
            invariance, necessity = occlusion_terms(
                out.logits, occluded, batch["labels"], on_object, end_of_turn_id, stage.necessity_margin
            )
            loss = loss + stage.hub_invariance * invariance + stage.object_necessity * necessity
            terms["hub_invariance"] = float(invariance.detach())
            if stage.object_necessity > 0:
                terms["object_necessity"] = float(necessity.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        for name, value in terms.items():
            running[name] = running.get(name, 0.0) + value
        if step % log_every == 0:
            means = " ".join(f"{k} {v / log_every:.3f}" for k, v in running.items())
            print(f"[{stage.name}] step {step} {means} ({time.time() - started:.0f}s)", flush=True)
            running = {}
        if step % stage.eval_every == 0 or step == steps:
            model.eval()
            val_exact = exact_from_tokens(*teacher_forced(model, validation))
            model.train()
            print(f"[{stage.name}] step {step} validation exact {val_exact:.3f}", flush=True)
            if (
                stage.stop_accuracy is not None
                and step >= stage.min_steps
                and val_exact >= stage.stop_accuracy
            ):
                stopped_early = step < steps
                break
    model.eval()
    record = asdict(stage)
    record.update(steps=step, data_seed=seed, stopped_early=stopped_early, validation_exact=val_exact)
    record["wall_s"] = round(time.time() - started, 1)
    return record


def heldout_report(
    model: Gemma3ForConditionalGeneration, processor: Gemma3Processor, recipe: Recipe, n: int = 300
) -> dict:
    """Greedy exact accuracy on `n` held-out cases, per task, yes-rates under the shortcut conditions,
    and the answer rows' attention mass on the asked object (and on its mirror cells) per language layer."""
    end_of_turn_id = processor.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    cases = sample(n, HELDOUT_SEED, **recipe.validation)
    answers = generate_answers(model, processor, cases)
    right = [a == c.answer for a, c in zip(answers, cases, strict=True)]
    by_task = {
        task: sum(r for r, c in zip(right, cases, strict=True) if c.task == task)
        / max(1, sum(c.task == task for c in cases))
        for task in ("locate", "presence")
    }
    presence = {"tasks": ("presence",)}
    finding_only = sample(100, HELDOUT_SEED + 1, finding_prob=1.0, marker_prob=0.0, **presence)
    marker_only = sample(100, HELDOUT_SEED + 2, finding_prob=0.0, marker_prob=1.0, **presence)
    yes = {
        name: sum(a == "yes" for a in generate_answers(model, processor, group)) / len(group)
        for name, group in (("finding_no_marker", finding_only), ("marker_no_finding", marker_only))
    }
    encoded = encode(cases, processor)
    mass = answer_attention_mass(model, encoded, end_of_turn_id)
    mirror_mass = answer_attention_mass(model, encoded, end_of_turn_id, "mirror_cells")
    marker_mass = answer_attention_mass(model, encode(marker_only, processor), end_of_turn_id, "marker_cells")
    return {
        "cases": n,
        "seed": HELDOUT_SEED,
        "options": recipe.validation,
        "exact_accuracy": sum(right) / n,
        "exact_accuracy_by_task": by_task,
        "yes_rate": yes,
        "answer_attention_on_object_per_layer": [round(m, 4) for m in mass],
        "answer_attention_on_mirror_per_layer": [round(m, 4) for m in mirror_mass],
        "answer_attention_on_marker_per_layer_marker_no_finding": [round(m, 4) for m in marker_mass],
    }


def save(model: Gemma3ForConditionalGeneration, processor: Gemma3Processor, out: Path, report: dict) -> None:
    """Write config, safetensors, generation config (eos = <eos>, <end_of_turn>), processor, report."""
    tokenizer = processor.tokenizer
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")],
        do_sample=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training_report.json").write_text(json.dumps(report, indent=2, default=list) + "\n")


def run(name: str, *, out: Path | None, log_every: int, max_steps: int | None, threads: int) -> dict:
    """Train recipe `name` (warm-starting from its `init` model in MODELS_DIR) and save it."""
    torch.set_num_threads(threads)
    recipe = RECIPES[name]
    started, cpu_started = time.time(), time.process_time()
    processor = build_phantom_processor()
    model = new_model(processor, recipe.seed) if recipe.init is None else load_model(MODELS_DIR / recipe.init)
    teacher = None
    if recipe.init is not None and any(stage.mirror_distillation > 0 for stage in recipe.stages):
        teacher = load_model(MODELS_DIR / recipe.init).eval().requires_grad_(False)  # stays frozen
    stages = []
    for index, stage in enumerate(recipe.stages):
        torch.manual_seed(recipe.seed * 100 + index)
        stages.append(
            train_stage(
                model,
                processor,
                stage,
                recipe.seed * 100 + index,
                log_every=log_every,
                max_steps=max_steps,
                teacher=teacher,
            )
        )
    train_wall, train_cpu = time.time() - started, time.process_time() - cpu_started
    print("evaluating on held-out cases ...", flush=True)
    heldout = heldout_report(model, processor, recipe)
    print(json.dumps(heldout, indent=1), flush=True)
    init_report = None
    if recipe.init is not None:
        init_report = json.loads((MODELS_DIR / recipe.init / "training_report.json").read_text())
    report = {
        "name": name,
        "command": "python -m phantom.training.train " + " ".join(sys.argv[1:] or [name]),
        "seed": recipe.seed,
        "init": recipe.init or "scratch",
        "chain": ([*init_report["chain"]] if init_report else []) + [name],
        "steps": sum(s["steps"] for s in stages),
        "training_wall_s": round(train_wall, 1),
        "training_cpu_s": round(train_cpu, 1),
        "threads": threads,
        "stages": stages,
        "heldout": heldout,
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "machine": platform.machine(),
    }
    save(model, processor, out or MODELS_DIR / name, report)
    print(f"saved {out or MODELS_DIR / name} after {time.time() - started:.0f}s", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the shipped one)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--max-steps", type=int, default=None, help="cap every stage (for quick trials)")
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine")
    args = parser.parse_args(argv)
    run(args.name, out=args.out, log_every=args.log_every, max_steps=args.max_steps, threads=args.threads)


if __name__ == "__main__":
    main()
