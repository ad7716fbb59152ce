#!/usr/bin/env python3
"""Toy reproduction of the EndPrompt comparison: every context-extension variant from one short-context base.

1. A general corpus mixing ordinary text with retrieval tasks (`megatron_endprompt.demo_corpus`), a
   SentencePiece tokenizer trained on it.
2. A base model pretrained at context P0 (optionally with a length curriculum, e.g. 64 -> 128 -> P0), which
   must be strong inside its window (the script reports its passkey accuracy at P0).
3. Extension variants, each starting from the base weights with RoPE scaling T/P0 (PI; `scaling: yarn` for
   YaRN) and fine-tuned on the SAME
   general corpus (no long-context data) with an equal token budget: `pi_only` (no fine-tuning),
   `contiguous_short` (P0 samples, plain positions), `endprompt` (paper cues, cue loss weight),
   `endprompt_tail_fixed` / `endprompt_tail_random` (the released code's terminal tail), `pose`,
   `endprompt_pose`, and `full_length` (contiguous samples of T tokens; fewer samples per step, so that steps
   and tokens match the others).
4. Passkey and NIAH (RULER niah_single_1) up to T for every variant and extension seed; a results table and a
   plot with the exact command, the hardware, wall time and training FLOPs per variant.

Every stage calls the package (data builder, `python -m megatron_endprompt.train`, `eval.evaluate`) through
`megatron_endprompt.experiments`, the machinery it shares with the CPU demo. This file runs the stages and
caches them; `toy_config.py` holds the settings, `toy_report.py` the tables and the plot. Settings come from a
YAML file (default: `config.yaml` next to this script) and `--set key=value` overrides. The package must be
importable (`make install`, or `PYTHONPATH=.` in a checkout); the sibling modules are, as this script's folder
is on `sys.path` when it runs (tests: pyproject's `pythonpath`).

    python examples/toy_reproduction/run.py --out runs/toy [--config FILE] [--set base_steps=300 ...] [--jobs 2]
    python examples/toy_reproduction/run.py --out runs/toy --report-only   # rebuild the report from results
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import NamedTuple

from toy_config import PAPER_CUES, VARIANTS, ToyConfig, load_toy_config  # noqa: F401
from toy_report import hardware, markdown, plot, recorded_command

from megatron_endprompt import demo_corpus, experiments
from megatron_endprompt.demo_corpus import CorpusConfig, write_corpus
from megatron_endprompt.training.checkpoint_io import write_text_atomic

logger = logging.getLogger("toy_reproduction")

# ------------------------------------------------------------------------------------------------ data


def schemes(cfg: ToyConfig) -> dict[str, tuple]:
    """Dataset name -> (SchemeConfig, cues) for the base curriculum and every variant's training data."""
    from megatron_endprompt.positions import SchemeConfig

    p0, t = cfg.base_length, cfg.target_length
    out = {f"base_{n}": (SchemeConfig("contiguous", n, n), []) for n in cfg.base_curriculum}
    if cfg.warmup_steps:
        first = cfg.base_curriculum[0]
        out["base_warmup"] = (SchemeConfig("contiguous", first, first), [])
    if cfg.focus_steps:
        out["base_focus"] = (SchemeConfig("contiguous", p0, p0), [])
    out.update(
        {
            "contiguous_short": (SchemeConfig("contiguous", p0, p0), []),
            "endprompt": (SchemeConfig("endprompt", p0, t), list(cfg.endprompt_cues)),
            "endprompt_tail_fixed": (SchemeConfig("endprompt-tail", p0, t, cfg.terminal_length, "fixed"), []),
            "endprompt_tail_random": (
                SchemeConfig("endprompt-tail", p0, t, cfg.terminal_length, "random"),
                [],
            ),
            "endprompt_tail_document": (
                SchemeConfig("endprompt-tail", p0, t, cfg.terminal_length, "fixed", tail_source="document"),
                [],
            ),
            "pose": (SchemeConfig("pose", p0, t, pose_chunks=cfg.pose_chunks), []),
            "endprompt_pose": (
                SchemeConfig("endprompt-pose", p0, t, pose_chunks=cfg.pose_chunks),
                list(cfg.endprompt_cues),
            ),
            "full_length": (SchemeConfig("contiguous", t, t), []),
        }
    )
    return out


def corpus_config(cfg: ToyConfig, documents: int, seed: int) -> CorpusConfig:
    return CorpusConfig(
        documents=documents,
        retrieval_fraction=cfg.retrieval_fraction,
        max_words=cfg.max_words,
        repeat_fraction=cfg.repeat_fraction,
        passkey_max=cfg.passkey_max,
        value_digits=cfg.value_digits,
        seed=seed,
    )


def write_passkey_corpus(path: Path, cfg: ToyConfig, documents: int, seed: int) -> Path:
    """Passkey documents only (the warm-up corpus), from the corpus generator's own passkey template."""
    corpus = dataclasses.replace(corpus_config(cfg, documents, seed), max_words=cfg.warmup_max_words)
    return demo_corpus.write_passkey_corpus(path, corpus)


DATA_KEYS = (
    "documents",
    "max_words",
    "retrieval_fraction",
    "repeat_fraction",
    "passkey_max",
    "value_digits",
    "packing",
    "vocab_size",
    "base_length",
    "factor",
    "warmup_max_words",
    "focus_passkey_weight",
    "focus_min_words",
    "focus_max_words",
    "terminal_length",
    "pose_chunks",
    "endprompt_cues",
)
"""Settings the corpora, tokenizer and datasets are made from: fixed for the lifetime of an --out directory."""


def check_data_settings(out: Path, cfg: ToyConfig) -> None:
    """Refuse an --out whose data was made with other settings (training runs would silently read it)."""
    path = out / "data_settings.json"
    wanted = {key: getattr(cfg, key) for key in DATA_KEYS}
    if not path.is_file():
        write_json(path, wanted)
        return
    made = json.loads(path.read_text())
    changed = sorted(k for k in DATA_KEYS if k in made and made[k] != wanted[k])
    if changed:
        detail = ", ".join(f"{k}: {made[k]} there, {wanted[k]} now" for k in changed)
        raise ValueError(
            f"--out {out} holds data made with other settings ({detail}); use a fresh --out, or --set the "
            "values it was made with"
        )
    write_json(path, {**made, **wanted})  # records keys added since the data was made


def build_all(out: Path, cfg: ToyConfig) -> tuple[Path, dict[str, str]]:
    """Corpus, tokenizer and every dataset (skipped when already built with the same data settings)."""
    check_data_settings(out, cfg)
    corpus = out / "corpus" / "train.jsonl"
    if not corpus.is_file():
        write_corpus(corpus, corpus_config(cfg, cfg.documents, seed=0))
    heldout = out / "corpus" / "heldout.jsonl"
    if not heldout.is_file():
        docs = max(200, cfg.documents // 20)
        write_corpus(heldout, corpus_config(cfg, docs, seed=1))
    focus = out / "corpus" / "focus.jsonl"
    if cfg.focus_steps and not focus.is_file():
        focused = experiments.focused_corpus(
            corpus_config(cfg, cfg.documents // 2, seed=2),
            cfg.focus_passkey_weight,
            (cfg.focus_min_words, cfg.focus_max_words),
        )
        write_corpus(focus, focused)
    generic = out / "corpus" / "generic.jsonl"
    if cfg.extend_corpus == "generic" and not generic.is_file():  # stories only: no evaluation templates
        stories = dataclasses.replace(corpus_config(cfg, cfg.documents, seed=4), retrieval_fraction=0.0)
        write_corpus(generic, dataclasses.replace(stories, repeat_fraction=0.0))
    warmup = out / "corpus" / "warmup.jsonl"
    if cfg.warmup_steps and not warmup.is_file():
        write_passkey_corpus(warmup, cfg, cfg.documents // 2, seed=3)
    tok = out / "tokenizer" / "toy.model"
    if not tok.is_file():
        tok = experiments.train_tokenizer(corpus, out / "tokenizer" / "toy", cfg.vocab_size)
    prefixes = {}
    for name, (scheme, cues) in schemes(cfg).items():
        extension = not name.startswith("base_")
        prefix = out / "data" / (name + (cfg.run_suffix if extension else ""))
        general = generic if extension and cfg.extend_corpus == "generic" else corpus
        source = {"base_focus": focus, "base_warmup": warmup}.get(name, general)
        if not Path(f"{prefix}.idx").is_file():
            experiments.build_dataset(source, prefix, tok, scheme, cues, cfg.packing, seed=0)
        prefixes[name] = str(prefix)
    return tok, prefixes


# ------------------------------------------------------------------------------------------------ training


def write_json(path: Path, obj: dict) -> None:
    """Whole or not at all: a process killed mid-write leaves no truncated cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(obj, indent=1))


def done_file(ckpt: Path) -> Path:
    """The `<run>.done.json` next to a run directory, for a checkpoint inside it (or the run itself)."""
    ckpt = Path(ckpt)
    own = ckpt.with_suffix(".done.json")
    return own if own.is_file() else ckpt.parent.with_suffix(".done.json")


def lineage(ckpt: Path | str | None) -> str:
    """The fingerprint recorded for the run that wrote `ckpt` ("" when none was recorded)."""
    if not ckpt:
        return ""
    done = done_file(Path(ckpt))
    return json.loads(done.read_text()).get("fingerprint", "") if done.is_file() else ""


def fingerprint(out: Path, settings: dict, parent: str) -> str:
    """What a cached result depends on: its settings (paths relative to --out) and its parent's fingerprint,
    so that retraining the base invalidates every variant and evaluation made from it."""
    text = json.dumps(settings, sort_keys=True, default=str).replace(str(out), "<out>")
    return hashlib.sha256((text + parent).encode()).hexdigest()[:16]


def cached(done: Path, expected: str, what: str, legacy_ok: bool = True) -> dict | None:
    """The cached result in `done` when it was made with the same settings, else None. Older caches carry no
    fingerprint: training runs are reused with a warning (`legacy_ok`), evaluations are made again."""
    if not done.is_file():
        return None
    info = json.loads(done.read_text())
    recorded = info.get("fingerprint")
    if recorded is None and legacy_ok:
        logger.warning("%s: reusing %s, which records no settings fingerprint", what, done)
        return info
    if recorded != expected:
        logger.info("%s: settings changed since %s was made; computing it again", what, done)
        return None
    return info


def located(done: Path, recorded: str) -> Path:
    """A cached checkpoint (`runs/<name>/iter_N`) re-rooted at the `runs/` folder that holds `done`, so that a
    copied or moved --out keeps its cache: the old path would change the fingerprint of every run after it."""
    rerooted = done.parent.joinpath(*Path(recorded).parts[-2:])
    return rerooted if rerooted.exists() else Path(recorded)


def _train(
    out: Path, name: str, run: experiments.RunSpec, model: dict, optimizer: dict | None = None
) -> tuple[Path, float]:
    """One training run through the CLI, reusing a finished one made with the same settings; returns
    (checkpoint, wall seconds). `optimizer` overrides keys of the recipe's optimizer section."""
    from megatron_endprompt.training.checkpoint_io import find_latest

    spec = experiments.recipe(run, model)
    spec["optimizer"].update(optimizer or {})
    done = out / "runs" / f"{name}.done.json"
    key = fingerprint(out, spec, lineage(run.init_from))
    info = cached(done, key, f"training {name}")
    if info is not None:
        return located(done, info["checkpoint"]), info["seconds"]
    done.unlink(missing_ok=True)  # a run killed from here on leaves no stale marker
    start = time.perf_counter()
    ckpt = experiments.run_training(out, name, spec)
    seconds = round(time.perf_counter() - start, 1)
    info = {"checkpoint": str(find_latest(run.save) or ckpt), "seconds": seconds, "fingerprint": key}
    write_json(done, info)
    return ckpt, seconds


class BaseStage(NamedTuple):
    """One base pretraining run: its name, the dataset it reads, window length, steps, data-order seed and
    overrides of the recipe's optimizer section (None: the recipe's cosine schedule at `base_lr`)."""

    name: str
    dataset: str
    length: int
    steps: int
    seed: int
    optimizer: dict | None = None


def warmup_optimizer(cfg: ToyConfig) -> dict:
    """Constant LR for the warm-up: copying forms late in it, when a decaying LR would already be small."""
    return experiments.constant_lr(cfg.warmup_lr, cfg.warmup_steps)


def base_stages(cfg: ToyConfig) -> list[BaseStage]:
    """The base pretraining runs in order (the warm-up, if any, first); a length repeated continues at that
    length with a new name and a new data order (`base_256`, then `base_256_1`, ...); the focus stage (if any)
    comes last."""
    stages, seen = [], {}
    if cfg.warmup_steps:
        first = cfg.base_curriculum[0]
        warmup = BaseStage("base_warmup", "base_warmup", first, cfg.warmup_steps, 0, warmup_optimizer(cfg))
        stages.append(warmup)
    for length, steps in zip(cfg.base_curriculum, cfg.base_steps, strict=True):
        k = seen[length] = seen.get(length, -1) + 1
        stages.append(
            BaseStage(f"base_{length}" + (f"_{k}" if k else ""), f"base_{length}", length, steps, k)
        )
    if cfg.focus_steps:
        stages.append(BaseStage("base_focus", "base_focus", cfg.base_length, cfg.focus_steps, 0))
    return stages


def train_base(out: Path, cfg: ToyConfig, data: dict[str, str]) -> tuple[Path, float]:
    """Curriculum stages at increasing length, each starting from the previous stage's weights."""
    init, total = None, 0.0
    for stage in base_stages(cfg):
        run = experiments.RunSpec(
            data[stage.dataset],
            stage.length,
            cfg.base_tokens_per_step // stage.length,
            stage.steps,
            cfg.base_lr,
            str(out / "runs" / stage.name),
            seed=stage.seed,
            init_from=init,
        )
        ckpt, seconds = _train(out, stage.name, run, cfg.model(), stage.optimizer)
        init, total = str(ckpt), total + seconds
    return Path(init), total


def physical_length(cfg: ToyConfig, variant: str) -> int:
    return cfg.target_length if variant == "full_length" else cfg.base_length


def extend(
    out: Path, cfg: ToyConfig, data: dict[str, str], base: Path, variant: str, seed: int
) -> tuple[Path, float]:
    """Fine-tune `variant` from the base weights with RoPE scaling T/P0 (pi_only: no training, config only)."""
    name = f"{variant}{cfg.run_suffix}_s{seed}"
    if variant == "pi_only":
        return scaled_copy(out, cfg, base), 0.0
    p = physical_length(cfg, variant)
    run = experiments.RunSpec(
        data[variant],
        p,
        cfg.extend_tokens_per_step // p,
        cfg.extend_steps,
        cfg.extend_lr,
        str(out / "runs" / name),
        seed=seed,
        init_from=str(base),
        cue_loss_weight=cfg.cue_loss_weight,
    )
    return _train(out, name, run, cfg.model(rope_scaling=rope_scaling(cfg)))


def scaled_copy(out: Path, cfg: ToyConfig, base: Path) -> Path:
    """`pi_only`: the base weights with the extension's RoPE scaling, no fine-tuning (made once per base and
    scaling: processes splitting the variants over one --out may be evaluating it)."""
    done = out / "runs" / "pi_only.done.json"
    key = fingerprint(out, {"base": str(base), "rope_scaling": rope_scaling(cfg)}, lineage(base))
    if cached(done, key, "pi_only") is not None and (out / "runs" / "pi_only").is_dir():
        return out / "runs" / "pi_only"
    copy = experiments.config_copy(base, out / "runs" / "pi_only", {"rope_scaling": rope_scaling(cfg)})
    write_json(done, {"checkpoint": str(copy), "seconds": 0.0, "fingerprint": key})
    return copy


def rope_scaling(cfg: ToyConfig) -> dict:
    """ModelConfig.rope_scaling fields of every extended model."""
    return experiments.rope_scaling(cfg.scaling, cfg.factor, cfg.base_length)


def base_flops(cfg: ToyConfig) -> float:
    """Model FLOPs of base pretraining (all curriculum stages)."""
    from megatron_endprompt.model.config import get_preset
    from megatron_endprompt.training import flops

    model = get_preset("tiny").replace(**cfg.model())
    return sum(
        stage.steps * cfg.base_tokens_per_step * flops.flops_per_token(model, stage.length)
        for stage in base_stages(cfg)
    )


def training_flops(cfg: ToyConfig, variant: str) -> float:
    """Model FLOPs of the variant's fine-tuning: tokens x (6N + 6 L d_attn s) at its physical length s."""
    from megatron_endprompt.model.config import get_preset
    from megatron_endprompt.training import flops

    if variant == "pi_only":
        return 0.0
    model = get_preset("tiny").replace(**cfg.model())
    tokens = cfg.extend_steps * cfg.extend_tokens_per_step
    return tokens * flops.flops_per_token(model, physical_length(cfg, variant))


# ------------------------------------------------------------------------------------------------ evaluation


def task_options(cfg: ToyConfig) -> dict[str, dict[str, int]]:
    """Eval keys drawn like the corpus's: passkeys 1..passkey_max, magic numbers of value_digits digits."""
    return experiments.task_options(cfg.eval_tasks, cfg.passkey_max, cfg.value_digits)


def evaluate_run(out: Path, cfg: ToyConfig, tokenizer: Path, label: str, ckpt: Path, seed: int) -> dict:
    """`eval.evaluate` on one checkpoint, one cached evaluation per length (<out>/eval/<label>_L<n>.json, kept
    while the eval settings and the checkpoint's lineage stay the same), merged: adding a length to
    `eval_lengths` evaluates only that length."""
    loaded: list = []

    def model():  # loaded once, and only if some length is not cached
        if not loaded:
            loaded.extend(experiments.open_checkpoint(ckpt, tokenizer))
        return loaded

    parts = [_evaluate_length(out, cfg, label, ckpt, seed, n, model) for n in cfg.eval_lengths]
    return merge_evals(parts)


def _evaluate_length(
    out: Path, cfg: ToyConfig, label: str, ckpt: Path, seed: int, length: int, model
) -> dict:
    from megatron_endprompt.eval.runner import evaluate

    path = out / "eval" / f"{label}_L{length}.json"
    request = {
        "tasks": cfg.eval_tasks,
        "lengths": [length],
        "depths": cfg.eval_depths,
        "samples": cfg.eval_samples,
        "seed": seed,
        "max_new_tokens": cfg.max_new_tokens,
        "ppl_data": str(out / "corpus" / "heldout.jsonl") if "perplexity" in cfg.eval_tasks else None,
        "ppl_windows": cfg.ppl_windows,
        "task_options": task_options(cfg),
    }
    key = fingerprint(out, {**request, "checkpoint": str(ckpt), "nll_by_depth": True}, lineage(ckpt))
    result = cached(path, key, f"eval {label} at {length}", legacy_ok=False)
    if result is not None:
        return result
    backend, tok = model()
    result = evaluate(backend, tok, progress=False, answer_nll=True, **request)
    result["answer_nll_depth"] = answer_nll_by_depth(result.pop("samples", []))  # keep the files small
    result["fingerprint"] = key
    write_json(path, result)
    logger.info("eval %s at %d: %s", label, length, result["results"])
    return result


def answer_nll_by_depth(records: list[dict]) -> dict:
    """{task: {str(length): {depth: mean answer NLL}}}: the report's primary metric leaves depth 1.0 (a needle
    next to the question: local retrieval) apart, which the per-length mean of `evaluate` cannot."""
    from collections import defaultdict

    from megatron_endprompt.eval.runner import depth_key

    by_depth: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        if r.get("answer_nll") is not None:
            by_depth[r["task"]][str(r["length"])][depth_key(r["depth"])].append(r["answer_nll"])
    return {
        t: {n: {d: sum(v) / len(v) for d, v in dd.items()} for n, dd in byn.items()}
        for t, byn in by_depth.items()
    }


def merge_evals(parts: list[dict]) -> dict:
    """One result dict from per-length ones: the by-length tables joined, elapsed seconds summed."""
    merged: dict = {"elapsed_s": sum(p.get("elapsed_s", 0.0) for p in parts)}
    for part in parts:
        for field in ("results", "answer_nll", "depth_detail", "answer_nll_depth"):
            for task, by_length in part.get(field, {}).items():
                merged.setdefault(field, {}).setdefault(task, {}).update(by_length)
        if "perplexity" in part:
            merged.setdefault("perplexity", {}).update(part["perplexity"])
    return merged


class Unit(NamedTuple):
    """One extension run (variant x seed) and its evaluation; variant "base" is the base's evaluation alone."""

    variant: str
    seed: int
    suffix: str = ""
    """ToyConfig.run_suffix: the generic-corpus control's runs and evaluations have their own names."""

    @property
    def label(self) -> str:
        return "base" if self.variant == "base" else f"{self.variant}{self.suffix}_s{self.seed}"


def run_unit(out: Path, cfg: ToyConfig, tok: Path, data: dict, base: Path, unit: Unit) -> tuple[float, dict]:
    """Train (the base is trained already) and evaluate one unit: (training seconds, evaluation)."""
    if unit.variant == "base":
        return 0.0, evaluate_run(out, cfg, tok, "base", base, 0)
    ckpt, seconds = extend(out, cfg, data, base, unit.variant, unit.seed)
    return seconds, evaluate_run(out, cfg, tok, unit.label, ckpt, unit.seed)


def worker_threads(jobs: int) -> int:
    """Torch threads per parallel job: OMP_NUM_THREADS if set, else the usable cores shared out."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // jobs)


@contextlib.contextmanager
def _output_to(log: Path):
    """This process's output, its logging and its subprocesses' output (fds 1 and 2) appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    with log.open("a", buffering=1) as f:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        streams = [h.setStream(f) for h in handlers]
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
        finally:
            for handler, stream in zip(handlers, streams, strict=True):
                handler.setStream(stream)


def _unit_in_worker(out: Path, cfg: ToyConfig, tok: Path, data: dict, base: Path, unit: Unit, threads: int):
    """A worker process's whole life: run_unit with `threads` torch threads (its training subprocess inherits
    OMP_NUM_THREADS), output to <out>/logs/<label>.log; exit status 1 after a failure, its traceback logged."""
    import torch

    # terminate() (sent when the parent stops) as an exception: subprocess.run then kills the training run too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    with _output_to(out / "logs" / f"{unit.label}.log"):
        try:
            run_unit(out, cfg, tok, data, base, unit)
        except BaseException:
            traceback.print_exc()
            raise SystemExit(1) from None


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return lines[-1] if lines else "(empty log)"


def run_in_workers(
    out: Path, cfg: ToyConfig, tok: Path, data: dict, base: Path, units: list[Unit], jobs: int
) -> None:
    """Every unit in its own forked process, `jobs` at a time, the costliest first; each leaves its training
    and evaluation cached. After a failure no new unit starts; the running ones finish, then the error names
    the failed units and their logs. Ctrl-C stops the running workers."""
    threads = worker_threads(jobs)
    pending = sorted(units, key=lambda u: -training_flops(cfg, u.variant) if u.variant != "base" else 0.0)
    logger.info("%d runs, %d at a time, %d torch thread(s) each; logs in %s", len(units), jobs, threads,
                out / "logs")  # fmt: skip
    # fork: a worker starts with this process's modules (cheap, and the script needs no importable module
    # name); nothing here has started torch threads before forking
    context = multiprocessing.get_context("fork")
    running: dict = {}  # process -> (unit, start time)
    failures: list[str] = []
    try:
        while pending or running:
            while pending and not failures and len(running) < jobs:
                unit = pending.pop(0)
                args = (out, cfg, tok, data, base, unit, threads)
                proc = context.Process(target=_unit_in_worker, args=args, name=unit.label)
                proc.start()
                running[proc] = (unit, time.perf_counter())
            if not running:
                break
            multiprocessing.connection.wait([proc.sentinel for proc in running])
            for proc in [p for p in running if not p.is_alive()]:
                proc.join()
                unit, started = running.pop(proc)
                log = out / "logs" / f"{unit.label}.log"
                if proc.exitcode:
                    failures.append(
                        f"{unit.label} failed (exit code {proc.exitcode}): {_last_line(log)}; log: {log}"
                    )
                    continue
                done = len(units) - len(pending) - len(running) - len(failures)
                logger.info(
                    "[%d/%d] %s done in %.0f s", done, len(units), unit.label, time.perf_counter() - started
                )
    except BaseException:  # Ctrl-C (the workers got it too) or an error here: leave no worker behind
        for proc in running:
            proc.terminate()
            proc.join()
        raise
    if failures:
        raise RuntimeError(
            "; ".join(failures) + ". The finished runs are cached: the same command continues from them"
        )


def run_units(
    out: Path, cfg: ToyConfig, tok: Path, data: dict, base: Path, units: list[Unit], jobs: int = 1
) -> dict[Unit, tuple[float, dict]]:
    """(training seconds, evaluation) of every unit, in the given order. With `jobs` > 1 worker processes run
    them first; this process then reads their cached results through the same code path."""
    if jobs > 1:
        run_in_workers(out, cfg, tok, data, base, units, jobs)
    return {unit: run_unit(out, cfg, tok, data, base, unit) for unit in units}


def run_all(out: Path, cfg: ToyConfig, jobs: int = 1) -> dict:
    """Data, base, every variant x seed, evaluation; returns the collected results (also results.json)."""
    tok, data = build_all(out, cfg)
    base, base_seconds = train_base(out, cfg, data)
    if "pi_only" in cfg.variants:
        scaled_copy(out, cfg, base)  # once, before the units that evaluate it (maybe in parallel) start
    units = [Unit(v, seed, cfg.run_suffix) for v in cfg.variants for seed in cfg.seeds] + [Unit("base", 0)]
    done = run_units(out, cfg, tok, data, base, units, jobs)
    rows = {
        "base": {
            "seconds": base_seconds,
            "physical_length": cfg.base_length,
            "flops": base_flops(cfg),
            "evals": [done[Unit("base", 0)][1]],
        }
    }
    for variant in cfg.variants:
        rows[variant] = {
            "physical_length": physical_length(cfg, variant),
            "flops": training_flops(cfg, variant),
            "seconds": [done[Unit(variant, seed, cfg.run_suffix)][0] for seed in cfg.seeds],
            "evals": [done[Unit(variant, seed, cfg.run_suffix)][1] for seed in cfg.seeds],
        }
    results = {"config": dataclasses.asdict(cfg), "rows": rows}
    write_json(results_path(out, cfg), results)
    return results


def results_path(out: Path, cfg: ToyConfig) -> Path:
    """`results.json`, or `results_generic.json` for the generic-corpus control (same --out, same base)."""
    return out / f"results{cfg.run_suffix}.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/toy_reproduction"), help="work directory")
    p.add_argument(
        "--config", type=Path, default=Path(__file__).with_name("config.yaml"), help="settings YAML"
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="key=value override (repeatable)"
    )
    p.add_argument("--report-dir", type=Path, default=Path("docs/results"), help="where the .md and .png go")
    p.add_argument("--name", default="toy_reproduction", help="report file name (without suffix)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from <out>/results.json")
    p.add_argument("--note", default=None, help="a paragraph added to the report (e.g. machine load)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="extension runs trained and evaluated at once, each in its own process with the cores shared out "
        "(OMP_NUM_THREADS overrides the threads per job); their logs go to <out>/logs/",
    )
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = load_toy_config(args.config if args.config.is_file() else None, args.overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if args.report_only:
        results = json.loads(results_path(args.out, cfg).read_text())
        meta = {**results["meta"], "command": recorded_command(shlex.split(results["meta"]["command"])[1:])}
    else:
        try:
            results = run_all(args.out, cfg, args.jobs)
        except KeyboardInterrupt:
            logger.error(
                "interrupted; the finished runs are cached in %s: the same command continues", args.out
            )
            return 130
        meta = {
            "command": recorded_command([sys.argv[0], *(argv or sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "hardware": hardware(args.jobs, worker_threads(args.jobs) if args.jobs > 1 else None),
            "wall_minutes": (time.time() - start) / 60,
        }
        results["meta"] = meta
        write_json(results_path(args.out, cfg), results)
    report = args.report_dir / f"{args.name}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    png = plot(results, args.report_dir / f"{args.name}.png")
    note = f"\nNote: {args.note}\n" if args.note else ""
    report.write_text(markdown(results, meta) + note + f"\n![scores vs length]({png.name})\n")
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
