"""Small experiments end to end on CPU: the machinery the demo and the examples share.

`megatron_endprompt.demo`, examples/toy_reproduction and examples/real_model all go the same way, through the
package's own entry points:

- corpus      `demo_corpus` writes it; `focused_corpus` derives the retrieval-focused variant of a config
- tokenizer   `train_tokenizer`: SentencePiece on a JSON-lines corpus, digits split
- datasets    `build_dataset`: one `data.builder` build (SentencePiece tokenizer, EOD appended)
- training    `RunSpec` -> `recipe` (a `megatron_endprompt.train` YAML recipe; `constant_lr` for a warm-up)
              -> `run_training` (the training CLI in a subprocess, its final checkpoint checked)
- scaling     `rope_scaling` (the ModelConfig.rope_scaling of an extension) and `config_copy` (a checkpoint
              with its model config changed and no training: PI-only / YaRN-only models)
- evaluation  `open_checkpoint` (backend + tokenizer for `eval.evaluate`) and `task_options` (eval keys drawn
              as in the corpus)

Each function takes its sizes as arguments; the demo's presets and the examples' settings stay with them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from megatron_endprompt.checkpoint_layout import MODEL_CONFIG_FILE, find_latest, iteration_of
from megatron_endprompt.demo_corpus import CorpusConfig

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- data


def focused_corpus(cfg: CorpusConfig, passkey_weight: float, words: tuple[int, int]) -> CorpusConfig:
    """`cfg` with retrieval documents only (no stories, no copy practice), passkeys weighted `passkey_weight`
    against magic numbers and recall lists, haystacks of `words` = (min, max) words: a base model's
    retrieval-focused stage."""
    low, high = words
    return replace(
        cfg,
        retrieval_fraction=1.0,
        repeat_fraction=0.0,
        passkey_weight=passkey_weight,
        min_words=low,
        max_words=high,
    )


def train_tokenizer(corpus: Path, prefix: Path, vocab_size: int) -> Path:
    """A SentencePiece model (`<prefix>.model`) trained on the texts of a JSON-lines corpus, digits split:
    keys are copied digit by digit."""
    from megatron_endprompt.data.tokenizers import train_sentencepiece

    prefix.parent.mkdir(parents=True, exist_ok=True)
    with corpus.open(encoding="utf-8") as f:
        texts = (json.loads(line)["text"] for line in f)
        return Path(train_sentencepiece(texts, prefix, vocab_size=vocab_size, split_digits=True))


def build_dataset(
    source: Path | str,
    prefix: Path | str,
    tokenizer: Path | str,
    scheme,
    cues: Iterable[str] = (),
    packing: str = "aligned",
    seed: int = 0,
) -> dict:
    """`data.builder.build` of one JSON-lines corpus with a SentencePiece tokenizer, EOD after each document;
    `scheme` is a `positions.SchemeConfig`. Returns the build's meta.json contents."""
    from megatron_endprompt.data.builder import BuildConfig, build

    return build(
        BuildConfig(
            input=[str(source)],
            output_prefix=str(prefix),
            tokenizer_type="SentencePieceTokenizer",
            tokenizer_model=str(tokenizer),
            scheme=scheme,
            cues=list(cues),
            append_eod=True,
            packing=packing,
            seed=seed,
        )
    )


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class RunSpec:
    """One training run of a small experiment (becomes a `megatron_endprompt.train` recipe)."""

    data_prefix: str
    """Built dataset prefix."""
    seq_length: int
    """Physical sample length of that dataset."""
    global_batch: int
    """Samples per optimizer step."""
    steps: int
    """Optimizer steps."""
    lr: float
    """Peak learning rate (cosine decay to lr / 10 after a short warmup)."""
    save: str
    """Checkpoint directory."""
    seed: int = 0
    """Initialisation and data-order seed."""
    init_from: str | None = None
    """Checkpoint whose weights start the run (None: random initialisation)."""
    cue_loss_weight: float = 0.1
    """Loss weight of EndPrompt cue tokens."""


def recipe(run: RunSpec, model: dict) -> dict:
    """The YAML recipe of `megatron_endprompt.train` for `run`; `model` holds the ModelConfig fields (over the
    `tiny` preset)."""
    micro = max(1, min(8, run.global_batch))
    while run.global_batch % micro:
        micro -= 1
    return {
        "model": {"preset": "tiny", **model},
        "precision": {"dtype": "fp32"},
        "optimizer": {
            "lr": run.lr,
            "min_lr": run.lr / 10,
            "lr_schedule": "cosine",
            "warmup_steps": min(20, run.steps // 5),
            "weight_decay": 0.0,
            "clip_grad": 1.0,
        },
        "data": {
            "paths": [run.data_prefix],
            "seq_length": run.seq_length,
            "micro_batch_size": micro,
            "global_batch_size": run.global_batch,
            "split": "100,0,0",
            "num_workers": 0,
            "cue_loss_weight": run.cue_loss_weight,
            "seed": run.seed,
        },
        "training": {"train_steps": run.steps, "seed": run.seed},
        "checkpoint": {"save": run.save, "init_from": run.init_from},
        "logging": {"log_interval": max(1, run.steps // 10)},
    }


def constant_lr(lr: float, steps: int) -> dict:
    """Optimizer overrides of a warm-up run: constant LR after a short linear warm-up (copying from context
    forms late in it, when a decaying LR would already be small)."""
    return {"lr": lr, "min_lr": lr, "lr_schedule": "constant", "warmup_steps": min(100, steps // 5)}


def child_env() -> dict[str, str]:
    """Environment of a training subprocess: this checkout importable, and no rendezvous settings inherited
    (evaluating in this process initialises torch.distributed, which sets MASTER_PORT and friends)."""
    drop = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_training(out: Path, name: str, spec: dict) -> Path:
    """`python -m megatron_endprompt.train --config <out>/recipes/<name>.yaml` in a subprocess, from a fresh
    save directory; returns its final checkpoint (an error if the run stopped before its last step)."""
    path = out / "recipes" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    save = Path(spec["checkpoint"]["save"])
    if save.exists():
        shutil.rmtree(save)  # a fresh run: the CLI would otherwise resume from it
    cmd = [sys.executable, "-m", "megatron_endprompt.train", "--config", str(path)]
    logger.info("$ %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"training run {name!r} failed (exit {proc.returncode}); recipe {path}")
    latest = find_latest(save)
    if latest is None:
        raise RuntimeError(f"training run {name!r} left no checkpoint under {save}")
    steps, reached = spec["training"]["train_steps"], iteration_of(latest)
    if reached != steps:
        # the trainer exits 0 after a stop signal (preemption), with a checkpoint taken early
        raise RuntimeError(
            f"training run {name!r} stopped at step {reached} of {steps} (a stop signal?); "
            f"its checkpoint {latest} is not used"
        )
    return Path(latest)


def final_loss(save: Path) -> float | None:
    """Last logged training loss from `<save>/metrics.jsonl` (None when absent)."""
    path = save / "metrics.jsonl"
    if not path.is_file():
        return None
    losses = [json.loads(line).get("loss") for line in path.read_text().splitlines() if line.strip()]
    losses = [x for x in losses if x is not None]
    return round(losses[-1], 4) if losses else None


# ---------------------------------------------------------------------------------------------- scaling


def rope_scaling(kind: str, factor: float, original_window: int) -> dict:
    """ModelConfig.rope_scaling of a model extended `factor` times from `original_window` tokens: `linear`
    (position interpolation) or `yarn`."""
    scaling = {"type": kind, "factor": float(factor)}
    if kind == "yarn":
        scaling["original_max_position_embeddings"] = original_window
    return scaling


def config_copy(src: Path, dest: Path, changes: Mapping, link: bool = False) -> Path:
    """A copy of checkpoint `src` at `dest` (replaced if present) whose model config has `changes` applied: its
    fields replaced, and `rope_scaling`'s fields merged into the saved ones; the weights are untouched, so with
    `{"rope_scaling": rope_scaling(...)}` it is the scaling-only (e.g. PI-only) model. `link`: hard-link the
    weight files instead of copying them (same filesystem; the config is written as a new file)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, **({"copy_function": os.link} if link else {}))
    path = dest / MODEL_CONFIG_FILE
    model = json.loads(path.read_text())
    path.unlink()  # a hard link: writing in place would change `src`'s config too
    rope = {**model["rope_scaling"], **changes.get("rope_scaling", {})}
    path.write_text(json.dumps({**model, **changes, "rope_scaling": rope}, indent=2))
    return dest


# ---------------------------------------------------------------------------------------------- evaluation


def task_options(tasks: Iterable[str], passkey_max: int, value_digits: int) -> dict[str, dict[str, int]]:
    """`evaluate(task_options=...)` drawing keys as the corpus does: passkeys 1..passkey_max, magic numbers of
    `value_digits` digits (for the tasks among `tasks` that take those options)."""
    from megatron_endprompt.eval.tasks import TASK_OPTIONS

    out: dict[str, dict[str, int]] = {}
    for task in tasks:
        accepted = TASK_OPTIONS.get(task, {})
        if "key_max" in accepted:
            out[task] = {"key_max": passkey_max}
        if "number_digits" in accepted:
            out[task] = {"number_digits": value_digits}
    return out


def open_checkpoint(ckpt: Path | str, tokenizer: Path | str):
    """(backend, tokenizer) for `eval.evaluate`: a Megatron checkpoint and a SentencePiece model."""
    from megatron_endprompt.data.tokenizers import load_tokenizer
    from megatron_endprompt.eval.backends import MegatronBackend

    tok = load_tokenizer("SentencePieceTokenizer", str(tokenizer))
    return MegatronBackend.from_checkpoint(ckpt), tok
