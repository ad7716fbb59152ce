"""`evaluate(...)`: run tasks x lengths x depths x samples on a backend and collect a results dict.

Schema of the returned dict (also what tools/eval_long_context.py writes to results.json):
- `format`, `version`: "megatron-endprompt-eval", 1.
- `config`: every setting (tasks, lengths, depths, samples, seed, max_new_tokens, backend, tokenizer, ...).
- `results`: {task: {str(length): score 0-100}} (mean over depths and samples; RULER string match).
- `average`: {str(length): mean score over the generation tasks} (RULER's per-length average).
- `depth_detail`: {task: {str(length): {depth: score}}} for tasks with a needle depth ("all" otherwise).
- `perplexity`: {str(length): {ppl, tail_ppl, nll, windows, tokens}} when `perplexity` was requested.
- `answer_nll` (only with `answer_nll=True`, CLI `--answer-nll`): {task: {str(length): mean NLL per token of
  the first reference answer}}, teacher-forced after the prompt (lower is better; ln 10 = 2.30 is chance for a
  digit). Graded where string match is all or nothing: it shows a model getting closer to retrieving before it
  retrieves. Off by default: with a KV-cached backend (HF) it costs one extra forward pass per prompt, which
  roughly doubles evaluation time at long lengths; Megatron backends reuse that forward as generation's first
  step (the answer is generation's draft), so it is free when the answer fits in `max_new_tokens - 1` tokens.
- `metrics`: {task: metric name}; `samples`: one record per prompt (answers, prediction, score, depths).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import mean

import numpy as np

from megatron_endprompt.eval.backends import ModelBackend
from megatron_endprompt.eval.perplexity import load_token_stream, perplexity_by_length
from megatron_endprompt.eval.scoring import metric_name, score_sample
from megatron_endprompt.eval.tasks import (
    DEFAULT_DEPTHS,
    PERPLEXITY,
    get_task,
    make_sample,
    validate_task_options,
)
from megatron_endprompt.eval.tasks.base import TokenizerLike

logger = logging.getLogger(__name__)

RESULTS_FORMAT = "megatron-endprompt-eval"
RESULTS_VERSION = 1


def depth_key(depth: float | None) -> str:
    """JSON key of a depth: `0.25`, `1`, or `all` for tasks without a needle depth."""
    return "all" if depth is None else f"{depth:g}"


def validate_request(
    tasks: Sequence[str],
    lengths: Sequence[int],
    depths: Sequence[float],
    samples: int,
    max_positions: int,
    max_new_tokens: int | None = None,
    ppl_data: object = None,
) -> None:
    """Check everything before any work; errors name the flag to fix."""
    if not tasks:
        raise ValueError("--tasks: give at least one task")
    for task in tasks:
        if task != PERPLEXITY:
            get_task(task)
    if not lengths or any(int(n) != n or n < 2 for n in lengths):
        raise ValueError(f"--lengths: need positive integer token counts, got {list(lengths)}")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"--depths: values are fractions in [0, 1] (e.g. 0,0.5,1), got {list(depths)}")
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if PERPLEXITY in tasks and ppl_data is None:
        raise ValueError(
            "--tasks perplexity needs held-out text: pass --ppl-data (.txt/.jsonl or dataset prefix)"
        )
    for task in tasks:
        budget = 0 if task == PERPLEXITY else (max_new_tokens or get_task(task).max_new_tokens)
        too_long = [n for n in lengths if n + budget > max_positions]
        if too_long:
            raise ValueError(
                f"--lengths: {too_long} plus {budget} generated tokens of task {task!r} exceed the model's "
                f"max_position_embeddings {max_positions}; use lengths <= {max_positions - budget}"
            )


def _opts(options: dict[str, dict], task: str) -> dict:
    return options.get(get_task(task).name, {})


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="eval", unit="prompt", dynamic_ncols=True)


def _run_prompt(
    backend: ModelBackend, tokenizer: TokenizerLike, sample, budget: int, answer: list[int] | None
) -> dict:
    start = time.perf_counter()
    # the reference answer as a draft: a model that answers right costs one forward, not one per token
    generated = backend.generate(sample.prompt_ids, budget, stop_ids=[tokenizer.eod], draft=answer or ())
    # a model vocabulary larger than the tokenizer's can emit ids the tokenizer cannot decode
    limit = getattr(tokenizer, "vocab_size", None)
    prediction = tokenizer.decode([t for t in generated if limit is None or t < limit])
    return {
        "task": sample.task,
        "length": sample.metadata["length"],
        "depth": sample.metadata.get("depth"),
        "prompt_tokens": len(sample.prompt_ids),
        "needle_depth_tokens": sample.needle_depth_tokens,
        "needle_depth_fraction": sample.metadata.get("needle_depth_fraction"),
        "answers": sample.answers,
        "prediction": prediction,
        "generated_ids": generated,
        "score": score_sample(sample.task, prediction, sample.answers),
        "seconds": round(time.perf_counter() - start, 4),
    }


def answer_ids(tokenizer: TokenizerLike, sample) -> list[int] | None:
    """Token ids of `sample.answers[0]` as the text continues after the prompt (" 534" after "... is"), or None
    when the tokenizer does not split prompt + answer at the prompt's end."""
    body = sample.prompt_ids[1:] if sample.prompt_ids[:1] == [tokenizer.bos] else sample.prompt_ids
    full = tokenizer.encode(sample.prompt_text + " " + sample.answers[0])
    if full[: len(body)] != list(body) or len(full) == len(body):
        return None
    return full[len(body) :]


def teacher_forced_answer_nll(
    backend: ModelBackend, tokenizer: TokenizerLike, sample, answer: list[int] | None = None
) -> float | None:
    """Mean NLL (nats per token) of the first reference answer (`answer`: its ids when already known),
    teacher-forced after the prompt."""
    answer = answer if answer is not None else answer_ids(tokenizer, sample)
    if answer is None:
        return None
    nll = backend.token_nll(list(sample.prompt_ids) + answer)  # nll[j] scores token j + 1
    return float(nll[-len(answer) :].mean())


def _mean_answer_nll(records: list[dict]) -> dict:
    by_len: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("answer_nll") is not None:
            by_len[r["task"]][str(r["length"])].append(r["answer_nll"])
    return {t: {n: mean(v) for n, v in d.items()} for t, d in by_len.items()}


def _aggregate(records: list[dict]) -> tuple[dict, dict, dict]:
    by_len: dict = defaultdict(lambda: defaultdict(list))
    by_depth: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        by_len[r["task"]][str(r["length"])].append(r["score"])
        by_depth[r["task"]][str(r["length"])][depth_key(r["depth"])].append(r["score"])
    results = {t: {n: mean(v) for n, v in d.items()} for t, d in by_len.items()}
    detail = {t: {n: {k: mean(v) for k, v in dd.items()} for n, dd in d.items()} for t, d in by_depth.items()}
    lengths = sorted({n for d in results.values() for n in d}, key=int)
    average = {n: mean(d[n] for d in results.values() if n in d) for n in lengths}
    return results, detail, average


def _check_vocab(backend: ModelBackend, tokenizer: TokenizerLike) -> None:
    model_vocab, tok_vocab = getattr(backend, "vocab_size", None), getattr(tokenizer, "vocab_size", None)
    if model_vocab is not None and tok_vocab is not None and tok_vocab > model_vocab:
        raise ValueError(
            f"--tokenizer: {getattr(tokenizer, 'name', 'the tokenizer')} has {tok_vocab} tokens but the model's "
            f"vocabulary has {model_vocab}; pass the tokenizer the model was trained with"
        )


def _generation_records(
    backend: ModelBackend,
    tokenizer: TokenizerLike,
    plan: list[tuple[str, int, float | None, int]],
    seed: int,
    options: dict[str, dict],
    max_new_tokens: int | None,
    answer_nll: bool,
    progress: bool,
) -> list[dict]:
    """One record per (task, length, depth, sample index) of `plan`."""
    records = []
    with _progress(len(plan), progress) as bar:
        for task, n, d, i in plan:
            sample = make_sample(task, tokenizer, n, d, seed, i, _opts(options, task))
            budget = max_new_tokens or get_task(task).max_new_tokens
            answer = answer_ids(tokenizer, sample) if sample.answers else None
            # scored before generating: with the answer as the draft, generation's first forward is the same
            # sequence, which Megatron backends keep from the scoring forward
            nll = (
                teacher_forced_answer_nll(backend, tokenizer, sample, answer)
                if answer_nll and answer
                else None
            )
            record = _run_prompt(backend, tokenizer, sample, budget, answer)
            if answer_nll:
                record["answer_nll"] = nll
            records.append(dict(record, index=i))
            bar.update(1)
    return records


def evaluate(
    backend: ModelBackend,
    tokenizer: TokenizerLike,
    tasks: Sequence[str],
    lengths: Sequence[int],
    depths: Sequence[float] = DEFAULT_DEPTHS,
    samples: int = 4,
    seed: int = 0,
    *,
    max_new_tokens: int | None = None,
    ppl_data: str | Path | np.ndarray | None = None,
    ppl_windows: int | None = None,
    progress: bool = True,
    extra_config: dict | None = None,
    task_options: dict[str, dict] | None = None,
    answer_nll: bool = False,
) -> dict:
    """Evaluate `backend` on `tasks` at every length (and depth, for needle tasks); see the module docstring."""
    tasks, lengths, depths = list(tasks), [int(n) for n in lengths], [float(d) for d in depths]
    validate_request(tasks, lengths, depths, samples, backend.max_positions, max_new_tokens, ppl_data)
    options = validate_task_options(task_options)
    _check_vocab(backend, tokenizer)
    gen_tasks = [t for t in tasks if t != PERPLEXITY]
    plan = [
        (task, n, d, i)
        for task in gen_tasks
        for n in lengths
        for d in (depths if get_task(task).uses_depth else [None])
        for i in range(samples)
    ]
    for task in gen_tasks:  # fail fast on lengths a task cannot fill, before any model work
        for n in lengths:
            make_sample(task, tokenizer, n, depths[0] if depths else 0.5, seed, 0, _opts(options, task))
    start = time.perf_counter()
    records = _generation_records(
        backend, tokenizer, plan, seed, options, max_new_tokens, answer_nll, progress
    )
    results, detail, average = _aggregate(records)
    out = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "config": {
            "tasks": tasks,
            "lengths": lengths,
            "depths": depths,
            "samples": samples,
            "seed": seed,
            "max_new_tokens": max_new_tokens,
            "task_options": options,
            "answer_nll": answer_nll,
            "backend": backend.name,
            "max_positions": backend.max_positions,
            "tokenizer": getattr(tokenizer, "name", type(tokenizer).__name__),
            "ppl_data": None if ppl_data is None or isinstance(ppl_data, np.ndarray) else str(ppl_data),
            **(extra_config or {}),
        },  # fmt: skip
        "results": results,
        "average": average,
        "depth_detail": detail,
        "metrics": {t: metric_name(get_task(t).name) for t in gen_tasks},
        "samples": records,
    }
    if answer_nll:
        out["answer_nll"] = _mean_answer_nll(records)
    if PERPLEXITY in tasks:
        stream = ppl_data if isinstance(ppl_data, np.ndarray) else load_token_stream(ppl_data, tokenizer)
        out["perplexity"] = perplexity_by_length(backend, stream, lengths, ppl_windows or samples)
    out["elapsed_s"] = round(time.perf_counter() - start, 3)
    return out
