"""The decoy control, built by construction from the positive control: `python -m phantom.training.decoy`.

Chefer et al.'s rule clamps each head's gradient ⊙ attention at 0 *before* averaging over heads, so two
heads whose outputs cancel change nothing the model computes while one of the pair always survives the
clamp. The decoy control is the positive control plus such a pair in its last language layer:

- a new key/value head whose key projection is 0: its keys are 0 (Gemma3's k_norm and RoPE keep 0 at 0),
  so both of its query heads attend uniformly over the allowed keys, whatever the query;
- the new value's first component is a linear readout u of "this token is the decoy cell" (`DECOY_CELL`,
  an image cell no asked nodule covers), fitted by least squares to the layer's attention input
  (post input-layernorm) on training-seed cases;
- the pair's o_proj columns for that component are +α·d and −α·d, d a unit direction the answer logits
  are sensitive to (the top right-singular vector of their unit-scaled gradients w.r.t. the layer's
  attention output).

Both heads compute the same attention and values bit for bit, so their terms cancel inside o_proj,
before the post-attention norm: answers, logits (to float rounding) and token occlusion are the positive
control's. For the pair, ∂y/∂A[i, j] = ±α (g_i · d) v_j; after the clamp one head keeps
α |g_i · d| |v_j| A[i, j] on every key j, largest on the decoy cell, and chefer's peak moves there.
Rollout and raw attention see more uniform heads, which give every image cell the same weight.

Gemma3's config has one head count for all layers, and transformers' Gemma3TextConfig refuses a hidden
size that is not a multiple of the head count (128 with 6 heads fails to load), so every layer gets 8 query
/ 4 KV heads, the GQA ratio 2 kept: the positive control's heads keep query slots 0-3 and KV slots 0-1
(query heads 2k and 2k+1 read KV head k, as in transformers' `repeat_kv`); the pair is query heads 4-5 on
KV head 2 of the last layer. Every other new head (query 6-7 and KV 3 everywhere, and all new heads
outside the last layer) has all-zero projections: uniform attention that writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import Gemma3ForConditionalGeneration, Gemma3Processor

from explainer import Explainer
from explainer.runtime import keep_freed_memory
from phantom import MODEL_PATH, MODELS_DIR, sample
from phantom.training.compare import compare
from phantom.training.data import GRID, EncodedCases, build_phantom_processor, encode
from phantom.training.evaluate import MODEL_INPUTS, generate_answers
from phantom.training.recipes import HELDOUT_SEED
from phantom.training.routing import answer_rows
from phantom.training.train import load_model, save

# Row 0, column 2: above the patient's right lung apex. No asked nodule reaches row 0, column 0 or column 7
# (their boxes start below y = 0.135 of the image side, the row ends at 0.125); it is outside
# vocabulary.regions' corner blocks (rows and columns 0-1 and 6-7) and the pooling control's hub tokens
# (row 0, columns 3-4). Of the ten cells that qualify (row 0 columns 2 and 5, columns 0 and 7 of rows
# 2-5) its readout fitted best on training-seed cases: R² 0.60, the others 0.26-0.53.
DECOY_CELL = 2
ALPHA = 3e4
FIT_SEED = 4  # training seed of the readout and direction fits (training seeds stay below 10_000)
FIT_CASES = 1_000
HELDOUT_CASES = 200
HELDOUT_OFFSET = 40  # held-out cases: sample(n, HELDOUT_SEED + 40)
TRAINING_SEEDS = 10_000  # seeds below it are training seeds (phantom.training.recipes)
NEW_QUERY_HEADS = 4  # the pair and two idle heads: 8 query heads divide hidden 128, 6 do not
NEW_KV_HEADS = 2


@torch.no_grad()
def attention_inputs(model: Gemma3ForConditionalGeneration, encoded: EncodedCases) -> torch.Tensor:
    """The last language layer's attention input (after input_layernorm): [N, L, hidden] float32."""
    captured: list[torch.Tensor] = []
    layer = model.model.language_model.layers[-1]
    handle = layer.input_layernorm.register_forward_hook(lambda _m, _a, output: captured.append(output))
    try:
        for start in range(0, len(encoded), 100):
            batch = encoded.batch(slice(start, start + 100))
            model(**{key: batch[key] for key in MODEL_INPUTS})
    finally:
        handle.remove()
    return torch.cat(captured)


def decoy_targets(token_type_ids: torch.Tensor, cell: int) -> torch.Tensor:
    """[N, L] float64: 1 at the image token of grid cell `cell` (the cell-th image token), else 0."""
    image = token_type_ids == 1
    cell_index = image.long().cumsum(dim=1) - 1  # [N, L], k at the k-th image token
    return (image & (cell_index == cell)).double()


def fit_readout(hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Least-squares readout u (no intercept; Gemma3's projections have none) of `targets` from `hidden`.

    Args:
        hidden: [N, L, hidden] attention inputs. targets: [N, L] 1 at the decoy cell, else 0.
        mask: [N, L] bool, the positions that are not padding.
    Returns:
        u [hidden] float32, and the fit's R² over every position.
    """
    rows, wanted = hidden[mask].double(), targets[mask]  # [M, hidden], [M]
    readout = torch.linalg.lstsq(rows, wanted[:, None]).solution[:, 0]
    residual = ((rows @ readout - wanted) ** 2).sum()
    r2 = 1.0 - float(residual / ((wanted - wanted.mean()) ** 2).sum())
    return readout.float(), {"r2": round(r2, 4), "positions": int(mask.sum()), "cases": hidden.shape[0]}


def readout_quality(values: torch.Tensor, targets: torch.Tensor, token_type_ids: torch.Tensor) -> dict:
    """How well the readout values [N, L] single out the decoy cell among each case's image tokens."""
    image = token_type_ids == 1
    on_decoy = values[targets == 1]  # [N]
    others = values.abs().masked_fill(~image | (targets == 1), 0).amax(dim=1)  # [N]
    return {
        "decoy_value_mean": round(float(on_decoy.mean()), 4),
        "decoy_value_min": round(float(on_decoy.min()), 4),
        "other_cells_max_abs_mean": round(float(others.mean()), 4),
        "other_cells_max_abs_max": round(float(others.max()), 4),
        "decoy_largest_share": round(float((on_decoy.abs() > others).double().mean()), 4),
    }


def answer_gradients(
    model: Gemma3ForConditionalGeneration, encoded: EncodedCases, end_of_turn_id: int
) -> torch.Tensor:
    """∂(logit of the answer word a row predicts)/∂(last layer's attention output, before the
    post-attention norm) at every answer-word row: [M, hidden]. No parameter gradient is kept."""
    layer = model.model.language_model.layers[-1]
    gradients = []
    for start in range(0, len(encoded), 100):
        batch = encoded.batch(slice(start, start + 100))
        leaves: list[torch.Tensor] = []

        def as_leaf(_module, _args, output, leaves=leaves):
            leaves.append(output[0].detach().requires_grad_(True))  # [B, L, hidden]
            return (leaves[-1], *output[1:])

        handle = layer.self_attn.register_forward_hook(as_leaf)
        try:
            with torch.enable_grad():
                logits = model(**{key: batch[key] for key in MODEL_INPUTS}).logits  # [B, L, vocab]
                rows = answer_rows(batch["labels"], end_of_turn_id)  # [B, L]
                predicted = batch["labels"].roll(-1, dims=1).clamp_min(0)  # row p-1 predicts label p
                score = logits.gather(-1, predicted[..., None])[..., 0][rows].sum()
                (gradient,) = torch.autograd.grad(score, leaves)
        finally:
            handle.remove()
        gradients.append(gradient[rows])
    return torch.cat(gradients)


def sensitive_direction(gradients: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """d: the unit vector maximising Σ cos²(g, d) over the rows g of `gradients` [M, hidden].

    The top right-singular vector of the rows scaled to unit length, so every answer row counts alike:
    unscaled, the large gradients of the locate answers' "zone" rows decide d and presence answers get
    little of it (chefer's peak on the decoy in 94.7% of 150 cases of training seed 5, against 99.3%
    with scaled rows).
    The sign of d does not matter: one head of the pair has +α·d, the other −α·d.
    """
    unit = gradients.double() / gradients.double().norm(dim=1, keepdim=True)
    direction = torch.linalg.svd(unit, full_matrices=False).Vh[0]
    cosines = (unit @ direction).abs()  # [M]
    return direction.float(), {
        "rows": gradients.shape[0],
        "abs_cos_mean": round(float(cosines.mean()), 4),
        "abs_cos_q05": round(float(cosines.quantile(0.05)), 4),
        "abs_cos_min": round(float(cosines.min()), 4),
    }


def with_decoy_heads(
    positive: Gemma3ForConditionalGeneration, readout: torch.Tensor, direction: torch.Tensor, alpha: float
) -> Gemma3ForConditionalGeneration:
    """A copy of `positive` with 4 query and 2 KV heads more per layer; see the module docstring."""
    config = copy.deepcopy(positive.config)
    text = config.text_config
    heads, kv_heads, head_dim = text.num_attention_heads, text.num_key_value_heads, text.head_dim
    text.num_attention_heads, text.num_key_value_heads = heads + NEW_QUERY_HEADS, kv_heads + NEW_KV_HEADS
    decoy = Gemma3ForConditionalGeneration._from_config(config, attn_implementation="eager")
    state = positive.state_dict()
    last = len(positive.model.language_model.layers) - 1
    for index, layer in enumerate(positive.model.language_model.layers):
        prefix = f"model.language_model.layers.{index}.self_attn."
        attention = layer.self_attn
        q = torch.zeros((heads + NEW_QUERY_HEADS) * head_dim, text.hidden_size)  # [out, hidden]
        k = torch.zeros((kv_heads + NEW_KV_HEADS) * head_dim, text.hidden_size)
        v = torch.zeros_like(k)
        o = torch.zeros(text.hidden_size, (heads + NEW_QUERY_HEADS) * head_dim)  # [hidden, in]
        q[: heads * head_dim] = attention.q_proj.weight
        k[: kv_heads * head_dim] = attention.k_proj.weight
        v[: kv_heads * head_dim] = attention.v_proj.weight
        o[:, : heads * head_dim] = attention.o_proj.weight
        if index == last:
            # the pair: query heads `heads` and `heads + 1`, which both read KV head `kv_heads`
            v[kv_heads * head_dim] = readout  # the value's component 0
            o[:, heads * head_dim] = alpha * direction  # component 0 of the first head's output
            o[:, (heads + 1) * head_dim] = -alpha * direction  # ... and of the second's
        state.update({prefix + "q_proj.weight": q, prefix + "k_proj.weight": k})
        state.update({prefix + "v_proj.weight": v, prefix + "o_proj.weight": o})
    decoy.load_state_dict(state, strict=True)
    decoy.generation_config = copy.deepcopy(positive.generation_config)
    return decoy.eval()


def construct(
    positive: Gemma3ForConditionalGeneration, processor: Gemma3Processor, *, alpha: float, seed: int, n: int
) -> tuple[Gemma3ForConditionalGeneration, torch.Tensor, dict]:
    """Fit the readout and the direction on `n` cases of training seed `seed`, then add the heads.

    Returns the decoy, the readout u [hidden] and the construction's record for the report.
    """
    end_of_turn = processor.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    fit = encode(sample(n, seed), processor)
    hidden = attention_inputs(positive, fit)
    targets = decoy_targets(fit.token_type_ids, DECOY_CELL)
    readout, readout_fit = fit_readout(hidden, targets, fit.attention_mask.bool())
    readout_fit.update(readout_quality(hidden @ readout, targets, fit.token_type_ids))
    direction, direction_fit = sensitive_direction(answer_gradients(positive, fit, end_of_turn))
    decoy = with_decoy_heads(positive, readout, direction, alpha)
    text = positive.config.text_config
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    record = {
        "alpha": alpha,
        "decoy_cell": {"index": DECOY_CELL, "row": DECOY_CELL // GRID, "col": DECOY_CELL % GRID},
        "layer": len(decoy.model.language_model.layers) - 1,
        "heads": {"query": heads + NEW_QUERY_HEADS, "kv": kv_heads + NEW_KV_HEADS},
        "pair_query_heads": [heads, heads + 1],
        "pair_kv_head": kv_heads,
        "idle_query_heads": list(range(heads + 2, heads + NEW_QUERY_HEADS)),
        "value_component": 0,
        "fit_cases": n,
        "fit_seed": seed,
        "readout_fit": readout_fit,
        "direction_fit": direction_fit,
    }
    return decoy, readout, record


def heldout_report(
    positive: Gemma3ForConditionalGeneration,
    decoy: Gemma3ForConditionalGeneration,
    processor: Gemma3Processor,
    readout: torch.Tensor,
    n: int,
) -> tuple[dict, dict]:
    """The decoy against the positive control on `n` held-out cases (`compare`, and how the readout
    singles out the decoy cell there), and the greedy answers on the shipped reports' 300 held-out cases."""
    cases = sample(n, HELDOUT_SEED + HELDOUT_OFFSET)
    heldout = {"seed": HELDOUT_SEED + HELDOUT_OFFSET, "reference": "positive"}
    explainers = {"positive": Explainer(positive, processor), "decoy": Explainer(decoy, processor)}
    heldout.update(compare(explainers, cases, DECOY_CELL))
    encoded = encode(cases, processor)
    values = attention_inputs(decoy, encoded) @ readout  # what the pair's value reads, [N, L]
    targets = decoy_targets(encoded.token_type_ids, DECOY_CELL)
    heldout["readout"] = readout_quality(values, targets, encoded.token_type_ids)
    standard = sample(300, HELDOUT_SEED)
    answers = generate_answers(decoy, processor, standard)
    positive_answers = generate_answers(positive, processor, standard)
    answers_300 = {
        "cases": len(standard),
        "seed": HELDOUT_SEED,
        "exact_accuracy": sum(a == c.answer for a, c in zip(answers, standard, strict=True)) / len(standard),
        "identical_to_positive": sum(a == b for a, b in zip(answers, positive_answers, strict=True)),
    }
    return heldout, answers_300


def build(
    *,
    out: Path,
    alpha: float = ALPHA,
    seed: int = FIT_SEED,
    fit_cases: int = FIT_CASES,
    heldout_cases: int = HELDOUT_CASES,
    threads: int = 1,
    command: str = "python -m phantom.training.decoy",
) -> dict:
    """Build the decoy from the shipped positive control, measure it on held-out cases, save it to `out`.

    Returns the report written beside the model (`training_report.json`); `command` is recorded in it.
    """
    if not 0 <= seed < TRAINING_SEEDS:
        raise ValueError(f"--seed must be a training seed, 0 <= seed < {TRAINING_SEEDS}; got {seed}")
    if not alpha > 0:
        raise ValueError(f"--alpha must be positive, got {alpha}")
    torch.set_num_threads(threads)
    keep_freed_memory()
    started = time.time()
    positive = load_model(MODEL_PATH).eval()
    processor = build_phantom_processor()  # as train.py saves it (reloading adds load-time keys)
    decoy, readout, construction = construct(positive, processor, alpha=alpha, seed=seed, n=fit_cases)
    build_s = time.time() - started
    print(f"built in {build_s:.0f}s: {json.dumps(construction)}", flush=True)
    heldout, answers_300 = heldout_report(positive, decoy, processor, readout, heldout_cases)
    print(json.dumps(heldout, indent=1), flush=True)
    positive_report = json.loads((MODEL_PATH / "training_report.json").read_text())
    report = {
        "name": "decoy",
        "command": command,
        "seed": seed,
        "init": "positive",
        "chain": [*positive_report["chain"], "decoy"],
        "steps": 0,
        "construction": construction,
        "build_s": round(build_s, 1),
        "seconds": round(time.time() - started, 1),
        "threads": threads,
        "heldout": heldout,
        "heldout_answers": answers_300,
        "parameters": sum(p.numel() for p in decoy.parameters()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "machine": platform.machine(),
    }
    save(decoy, processor, out, report)
    print(f"saved {out} after {time.time() - started:.0f}s", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR / "decoy", help="output folder")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="o_proj scale of the cancelling pair")
    parser.add_argument(
        "--seed", type=int, default=FIT_SEED, help="training seed of the fit cases (< 10,000)"
    )
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine")
    args = parser.parse_args(argv)
    command = " ".join(["python -m phantom.training.decoy", *(sys.argv[1:] if argv is None else argv)])
    build(out=args.out, alpha=args.alpha, seed=args.seed, threads=args.threads, command=command)


if __name__ == "__main__":
    main()
