"""End-to-end CPU demo: corpus -> tokenizer -> data -> base model -> EndPrompt extension -> eval -> HF export.

``python -m megatron_endprompt.demo [--fast] [--out DIR]`` (README: ``make demo``). Every stage calls the
package's own entry points (data builder, training CLI, evaluation API, converter) and prints its timing:

1. corpus     a synthetic general corpus (stories + retrieval tasks), a passkey-only warm-up corpus and a
              retrieval-focused one, `megatron_endprompt.demo_corpus`
2. tokenizer  a SentencePiece model trained on it (digits split), `data.tokenizers.train_sentencepiece`
3. data       document-aligned samples: warm-up, base (P0), EndPrompt (P0, positions up to T), `data.builder`
4. warmup     passkey documents alone at a short length, constant LR: where a small model learns to copy
5. base       retrieval-focused pretraining at context P0, `python -m megatron_endprompt.train`
6. extend     YaRN T/P0 + EndPrompt fine-tuning on short samples of the general corpus
7. eval       passkey, NIAH, held-out perplexity up to T for base, YaRN-only and extended, `eval.evaluate`
8. export     the extended model to a Hugging Face directory, `convert.megatron_to_hf`, reloaded and checked
9. report     results.md (table) and results.png under --out

The recipe is the toy reproduction's (examples/toy_reproduction/README.md), shortened to fit the budget; YaRN
rather than PI because at this scale PI by 8 erases in-context retrieval, which YaRN keeps.

`--fast` shrinks every stage (a test runs it in CI); its numbers only show that the pipeline runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml

from megatron_endprompt.demo_corpus import CorpusConfig, write_corpus, write_passkey_corpus
from megatron_endprompt.model.config import small_llama_fields

logger = logging.getLogger("megatron_endprompt.demo")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of every stage; `FULL` and `FAST` are the two presets."""

    documents: int
    """Training documents in the generated general corpus (the warm-up and focused corpora get half as many)."""
    max_words: int
    """Largest retrieval haystack in words of the general corpus (tasks must fit the base window P0)."""
    retrieval_fraction: float
    """Share of general-corpus documents that are retrieval tasks."""
    vocab_size: int
    """SentencePiece vocabulary (digits are always single pieces)."""
    base_length: int
    """P0: the base model's training context, and the physical length of every extension sample."""
    factor: int
    """Extension factor: target length T = factor * P0, YaRN factor = factor."""
    hidden_size: int
    """Model width (head dim 32; see `model_overrides`)."""
    num_layers: int
    """Transformer blocks."""
    warmup_steps: int
    """Base steps on passkey documents alone at `warmup_length`, constant LR (copying forms here)."""
    base_steps: int
    """Base steps at P0 on the retrieval-focused corpus (after the warm-up)."""
    extend_steps: int
    """Optimizer steps of the EndPrompt extension (on the general corpus)."""
    base_tokens_per_step: int
    """Tokens per base step (warm-up and P0 stage): small batches, many updates."""
    extend_batch: int
    """Samples of P0 tokens per extension step."""
    lr: float
    """Peak learning rate of the base stages (the extension uses half of it)."""
    eval_lengths: tuple[int, ...]
    """Prompt lengths evaluated (tokens); the largest + 5 generated tokens must fit in T."""
    eval_samples: int
    """Prompts per (task, length, depth)."""
    eval_depths: tuple[float, ...]
    """Needle depths."""
    ppl_windows: int
    """Held-out windows per length for perplexity."""
    warmup_length: int = 128
    """Sample length of the warm-up."""
    warmup_max_words: int = 60
    """Largest haystack of a warm-up document, in words (documents fit `warmup_length`)."""
    focus_words: tuple[int, int] = (80, 170)
    """Haystack sizes (words) of the focused corpus: needles up to ~220 tokens before their question, as at
    depth 0 of a P0-token eval prompt."""
    focus_passkey_weight: float = 1.0
    """Passkeys against magic-number and recall documents (1 : 1 : 1 at 1.0) in the focused corpus. The warm-up
    already teaches passkey copying; the focused stage is where the keyed lookup of NIAH has to form."""
    passkey_max: int = 999
    """Passkeys 1..passkey_max in the corpora and the eval (3 digits: learnable on CPU)."""
    value_digits: int = 3
    """Digits of the magic numbers in the corpora and the NIAH eval."""
    cue: str = "End."
    """The EndPrompt cue text (the paper's EP_3)."""

    @property
    def target_length(self) -> int:
        return self.base_length * self.factor

    def model_overrides(self) -> dict:
        """ModelConfig fields over the `tiny` preset (head dim 32, GQA 2:1 when there are >= 2 heads)."""
        return small_llama_fields(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.target_length,
        )

    def rope_scaling(self) -> dict:
        """YaRN T/P0 of the extended and the scaling-only models."""
        return {
            "type": "yarn",
            "factor": float(self.factor),
            "original_max_position_embeddings": self.base_length,
        }


# FULL: the toy reproduction's base recipe, shortened (4 layers x width 256; aligned packing; a constant-LR
# passkey warm-up, then retrieval-focused steps at P0). Whether retrieval forms depends on the sample order:
# with 1000 + 600 steps one trial's base retrieved 40/40 passkeys at P0 and another 3/12; 1500 + 800 steps with
# passkeys weighted 4:1:1 gave passkey 12/12 and NIAH 0/12 at P0. With 1:1:1 and 1200 focused steps: passkey
# and NIAH 24/24 at P0, 13 min on 2 cores (docs/results/demo_cpu.md, with two runs whose order still depended
# on --out: one formed NIAH, one did not).
FULL = DemoConfig(
    documents=12000,
    max_words=150,
    retrieval_fraction=0.8,
    vocab_size=2048,
    base_length=256,
    factor=8,
    hidden_size=256,
    num_layers=4,
    warmup_steps=1500,
    base_steps=1200,
    extend_steps=100,
    base_tokens_per_step=1024,
    extend_batch=16,
    lr=1e-3,
    eval_lengths=(256, 1024, 2032),
    eval_samples=8,
    eval_depths=(0.0, 0.5, 1.0),
    ppl_windows=8,
)
FAST = replace(
    FULL,
    documents=600,
    retrieval_fraction=0.6,
    vocab_size=512,
    warmup_steps=6,
    base_steps=6,
    extend_steps=4,
    extend_batch=4,
    hidden_size=64,
    num_layers=2,
    eval_lengths=(256, 2032),
    eval_samples=1,
    eval_depths=(0.5,),
    ppl_windows=2,
)
EVAL_TASKS = ("passkey", "niah_single_1")


class Stages:
    """Runs named stages in order, logs each one's wall time, keeps the timings for the report."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def run(self, name: str, fn: Callable, *args, **kwargs):
        logger.info("=== stage %s ...", name)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.timings[name] = round(time.perf_counter() - start, 1)
        logger.info("=== stage %s done in %.1f s", name, self.timings[name])
        return result


# ---------------------------------------------------------------------------------------------- stages 1-3


def make_corpus(out: Path, dc: DemoConfig, seed: int) -> dict[str, Path]:
    """General training corpus, held-out corpus (another seed), passkey-only warm-up corpus and
    retrieval-focused corpus, as JSON lines."""
    cfg = CorpusConfig(
        documents=dc.documents,
        retrieval_fraction=dc.retrieval_fraction,
        max_words=dc.max_words,
        repeat_fraction=0.1,
        passkey_max=dc.passkey_max,
        value_digits=dc.value_digits,
        seed=seed,
    )
    half = max(50, dc.documents // 2)
    low, high = dc.focus_words
    focused = replace(
        cfg,
        documents=half,
        retrieval_fraction=1.0,
        repeat_fraction=0.0,
        passkey_weight=dc.focus_passkey_weight,
    )
    paths = {
        "train": write_corpus(out / "corpus" / "train.jsonl", cfg),
        "heldout": write_corpus(
            out / "corpus" / "heldout.jsonl",
            replace(cfg, documents=max(50, dc.documents // 20), seed=seed + 1),
        ),
        "warmup": write_passkey_corpus(
            out / "corpus" / "warmup.jsonl",
            replace(cfg, documents=half, max_words=dc.warmup_max_words, seed=seed + 2),
        ),
        "focus": write_corpus(
            out / "corpus" / "focus.jsonl", replace(focused, min_words=low, max_words=high, seed=seed + 3)
        ),
    }
    logger.info("corpus: %s (%.2f MB)", paths["train"], paths["train"].stat().st_size / 1e6)
    return paths


def make_tokenizer(out: Path, corpus: Path, dc: DemoConfig) -> Path:
    """A SentencePiece model trained on the corpus text (digits split: keys are copied digit by digit)."""
    from megatron_endprompt.data.tokenizers import train_sentencepiece

    texts = (json.loads(line)["text"] for line in corpus.open(encoding="utf-8"))
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    model = train_sentencepiece(
        texts, out / "tokenizer" / "demo", vocab_size=dc.vocab_size, split_digits=True
    )
    return Path(model)


def build_data(
    out: Path, corpus: dict[str, Path], tokenizer: Path, dc: DemoConfig, seed: int
) -> dict[str, str]:
    """Warm-up samples, contiguous samples at P0 (base) and EndPrompt samples (P0 physical, positions up to T),
    every sample starting at a document start (`--packing aligned`: no question without its needle)."""
    from megatron_endprompt.data.builder import BuildConfig, build
    from megatron_endprompt.positions import SchemeConfig

    prefixes = {}
    p0, first = dc.base_length, dc.warmup_length
    datasets = {
        "warmup": (corpus["warmup"], SchemeConfig("contiguous", first, first), []),
        "base": (corpus["focus"], SchemeConfig("contiguous", p0, p0), []),
        "endprompt": (corpus["train"], SchemeConfig("endprompt", p0, dc.target_length), [dc.cue]),
    }
    for name, (source, scheme, cues) in datasets.items():
        prefix = str(out / "data" / name)
        meta = build(
            BuildConfig(
                input=[str(source)],
                output_prefix=prefix,
                tokenizer_type="SentencePieceTokenizer",
                tokenizer_model=str(tokenizer),
                scheme=scheme,
                cues=cues,
                append_eod=True,
                packing="aligned",
                seed=seed,
            )
        )
        logger.info("data %s: %s", name, meta.get("counts"))
        prefixes[name] = prefix
    return prefixes


# ---------------------------------------------------------------------------------------------- stages 4-5


@dataclass(frozen=True)
class RunSpec:
    """One training run of the demo or the toy reproduction (becomes a `megatron_endprompt.train` recipe)."""

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
    """The YAML recipe of `megatron_endprompt.train` for `run`; `model` holds the ModelConfig fields."""
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


def child_env() -> dict[str, str]:
    """Environment of a training subprocess: this checkout importable, and no rendezvous settings inherited
    (evaluating in this process initialises torch.distributed, which sets MASTER_PORT and friends)."""
    drop = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_training(out: Path, name: str, spec: dict) -> Path:
    """`python -m megatron_endprompt.train --config <recipe>` in a subprocess; returns its final checkpoint
    (an error if the run stopped before its last step)."""
    from megatron_endprompt.training.checkpoint_io import find_latest, iteration_of

    path = out / "recipes" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    save = Path(spec["checkpoint"]["save"])
    if save.exists():
        shutil.rmtree(save)  # a fresh run: the CLI would otherwise resume from it
    env = child_env()
    cmd = [sys.executable, "-m", "megatron_endprompt.train", "--config", str(path)]
    logger.info("$ %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=env)
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


def pi_only(out: Path, base_ckpt: Path, dc: DemoConfig, rope_scaling: dict | None = None) -> Path:
    """Base weights with linear RoPE scaling T/P0 (or the given `rope_scaling` fields), no fine-tuning: a copy
    with an edited model config."""
    from megatron_endprompt.training.config import MODEL_CONFIG_FILE

    dest = out / "runs" / "pi_only"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(base_ckpt, dest)
    cfg = json.loads((dest / MODEL_CONFIG_FILE).read_text())
    scaling = rope_scaling or {"type": "linear", "factor": float(dc.factor)}
    cfg["rope_scaling"] = {**cfg["rope_scaling"], **scaling}
    (dest / MODEL_CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    return dest


# ---------------------------------------------------------------------------------------------- stages 6-8


def evaluate_models(
    out: Path, models: dict[str, Path], tokenizer: Path, heldout: Path, dc: DemoConfig
) -> dict[str, dict]:
    """Passkey, NIAH (RULER niah_single_1) and held-out perplexity at every eval length for each model."""
    from megatron_endprompt.data.tokenizers import load_tokenizer
    from megatron_endprompt.eval.backends import MegatronBackend
    from megatron_endprompt.eval.runner import evaluate

    tok = load_tokenizer("SentencePieceTokenizer", str(tokenizer))
    runs = {}
    for label, ckpt in models.items():
        backend = MegatronBackend.from_checkpoint(ckpt)
        runs[label] = evaluate(
            backend,
            tok,
            [*EVAL_TASKS, "perplexity"],
            dc.eval_lengths,
            dc.eval_depths,
            dc.eval_samples,
            seed=0,
            max_new_tokens=5,  # a space and 3 digits
            ppl_data=str(heldout),
            ppl_windows=dc.ppl_windows,
            progress=False,
            task_options={
                "passkey": {"key_max": dc.passkey_max},
                "niah_single_1": {"number_digits": dc.value_digits},
            },
        )
        (out / "eval").mkdir(parents=True, exist_ok=True)
        (out / "eval" / f"{label}.json").write_text(json.dumps(runs[label], indent=1))
        logger.info("eval %s: %s", label, {t: runs[label]["results"][t] for t in EVAL_TASKS})
    return runs


def export_hf(out: Path, ckpt: Path, tokenizer: Path) -> dict:
    """Export to HF, reload with transformers, compare logits with the Megatron checkpoint on one prompt."""
    import torch

    from megatron_endprompt.convert import megatron_to_hf
    from megatron_endprompt.eval.backends import HFBackend, MegatronBackend

    hf_dir = out / "hf" / "extended"
    megatron_to_hf(ckpt, hf_dir, overwrite=True)
    shutil.copy(tokenizer, hf_dir / "tokenizer.model")
    ids = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(0))
    ours = MegatronBackend.from_checkpoint(ckpt).logits(ids)
    theirs = HFBackend(hf_dir, device="cpu").logits(ids)
    diff = float((ours - theirs).abs().max())
    logger.info("HF export %s: max |logit difference| vs megatron = %.2e", hf_dir, diff)
    if diff > 1e-3:
        raise RuntimeError(f"HF export of {ckpt} does not reproduce the logits (max diff {diff:.2e})")
    return {"hf_dir": str(hf_dir), "max_abs_logit_diff": diff}


def final_loss(save: Path) -> float | None:
    """Last logged training loss from `<save>/metrics.jsonl` (None when absent)."""
    path = save / "metrics.jsonl"
    if not path.is_file():
        return None
    losses = [json.loads(line).get("loss") for line in path.read_text().splitlines() if line.strip()]
    losses = [x for x in losses if x is not None]
    return round(losses[-1], 4) if losses else None


def write_report(out: Path, runs: dict[str, dict], info: dict, timings: dict[str, float]) -> Path:
    """results.md: per-task score tables (models x lengths), settings, stage timings; plus results.png."""
    from megatron_endprompt.eval.report import comparison_table

    dc = info["config"]
    lines = [
        "# EndPrompt CPU demo"
        + (" (--fast: pipeline check only, numbers not meaningful)" if info["fast"] else ""),
        "",
        f"Base model trained at P0 = {dc['base_length']} tokens (a passkey warm-up at "
        f"{dc['warmup_length']}, then retrieval-focused steps at P0); extended {dc['factor']}x to "
        f"T = {dc['base_length'] * dc['factor']} with YaRN + EndPrompt on {dc['base_length']}-token samples of "
        "the general corpus.",
        "Rows: `base` (no scaling), `yarn_only` (YaRN, no fine-tuning), `extended` (YaRN + EndPrompt).",
        "",
        _cell_sizes(runs, dc),
        "",
    ]
    for task in EVAL_TASKS:
        lines += [f"## {task} (accuracy %, by prompt length in tokens)", "", comparison_table(runs, task), ""]
    lines += [
        "## held-out perplexity (by window length in tokens; lower is better)",
        "",
        comparison_table(runs, "perplexity"),
        "",
    ]
    lines += [
        "## Run",
        "",
        f"- final training loss: base {info['base_loss']}, extended {info['extend_loss']}",
        f"- HF export: {info['export']}",
        "- stage timings (s): "
        + ", ".join(f"{k} {v}" for k, v in timings.items())
        + f"; total {round(sum(timings.values()), 1)}",
        f"- settings: `{json.dumps(dc)}`",
        "",
    ]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    plot_results(runs, out / "results.png", dc, info["fast"])
    return path


def _cell_sizes(runs: dict[str, dict], dc: dict) -> str:
    """How many prompts / windows each table cell averages (the precision of a cell depends on it)."""
    depths = len(dc["eval_depths"])
    windows = sorted({p["windows"] for r in runs.values() for p in (r.get("perplexity") or {}).values()})
    span = "-".join(str(w) for w in sorted({windows[0], windows[-1]})) if windows else "0"
    return (
        f"Each accuracy cell averages {dc['eval_samples'] * depths} prompts ({dc['eval_samples']} per needle "
        f"depth x {depths} depths); each perplexity cell averages {span} held-out windows of that length."
    )


def plot_results(runs: dict[str, dict], path: Path, dc: dict, fast: bool) -> Path:
    """One panel per task (accuracy) and one for perplexity, against length; one line per model, the training
    window P0 and the target T marked; a --fast run's figure says that its numbers mean nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megatron_endprompt.eval.plots import length_axis, series_style

    window, target = dc["base_length"], dc["base_length"] * dc["factor"]
    fig, axes = plt.subplots(
        1, len(EVAL_TASKS) + 1, figsize=(4.8 * (len(EVAL_TASKS) + 1), 4.2), squeeze=False
    )
    panels = [(task, "accuracy (%)") for task in EVAL_TASKS] + [("perplexity", "held-out perplexity")]
    for ax, (task, ylabel) in zip(axes[0], panels, strict=True):
        lengths: set[int] = set()
        for i, (label, res) in enumerate(runs.items()):
            if task == "perplexity":
                row = sorted((int(n), v["ppl"]) for n, v in (res.get("perplexity") or {}).items())
            else:
                row = sorted((int(n), v) for n, v in res["results"][task].items())
            ax.plot([n for n, _ in row], [v for _, v in row], label=label, **series_style(i, len(runs)))
            lengths.update(n for n, _ in row)
        length_axis(ax, lengths, window, target, "window (tokens)" if task == "perplexity" else None)
        if task == "perplexity":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter("{x:g}")  # plain numbers, not 6 x 10^0
            ax.yaxis.set_minor_formatter("{x:g}")
        else:
            ax.set_ylim(-5, 105)
        ax.set(title=task, ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    caption = "Coinciding lines are drawn over each other (hollow markers of decreasing size)."
    if fast:
        caption = "--fast: a pipeline check with tiny models; these numbers are NOT meaningful. " + caption
    fig.suptitle(caption, fontsize=10, color="firebrick" if fast else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- main


def constant_lr(lr: float, steps: int) -> dict:
    """Optimizer overrides of a warm-up run: constant LR after a short linear warm-up (copying from context
    forms late in it, when a decaying LR would already be small)."""
    return {"lr": lr, "min_lr": lr, "lr_schedule": "constant", "warmup_steps": min(100, steps // 5)}


def base_stage(
    out: Path,
    name: str,
    data_prefix: str,
    length: int,
    steps: int,
    dc: DemoConfig,
    seed: int,
    init_from: Path | str | None = None,
) -> RunSpec:
    """One base pretraining run at `length` tokens per sample, `dc.base_tokens_per_step` tokens per step."""
    return RunSpec(
        data_prefix,
        length,
        dc.base_tokens_per_step // length,
        steps,
        dc.lr,
        str(out / "runs" / name),
        seed,
        init_from=None if init_from is None else str(init_from),
    )


def run_demo(out: Path, dc: DemoConfig, fast: bool, seed: int = 0) -> dict:
    """All stages; returns a summary dict (also written to <out>/summary.json)."""
    out.mkdir(parents=True, exist_ok=True)
    st = Stages()
    corpus = st.run("corpus", make_corpus, out, dc, seed)
    heldout = corpus["heldout"]
    tokenizer = st.run("tokenizer", make_tokenizer, out, corpus["train"], dc)
    data = st.run("data", build_data, out, corpus, tokenizer, dc, seed)
    model = dc.model_overrides()
    warmup = recipe(
        base_stage(out, "warmup", data["warmup"], dc.warmup_length, dc.warmup_steps, dc, seed), model
    )
    warmup["optimizer"].update(constant_lr(dc.lr, dc.warmup_steps))
    base = st.run("warmup", run_training, out, "warmup", warmup)
    base_run = base_stage(out, "base", data["base"], dc.base_length, dc.base_steps, dc, seed, init_from=base)
    base = st.run("base", run_training, out, "base", recipe(base_run, model))
    ext_run = RunSpec(
        data["endprompt"],
        dc.base_length,
        dc.extend_batch,
        dc.extend_steps,
        dc.lr / 2,
        str(out / "runs" / "extended"),
        seed,
        init_from=str(base),
    )
    ext_model = {**model, "rope_scaling": dc.rope_scaling()}
    extended = st.run("extend", run_training, out, "extended", recipe(ext_run, ext_model))
    models = {"base": base, "yarn_only": pi_only(out, base, dc, dc.rope_scaling()), "extended": extended}
    runs = st.run("eval", evaluate_models, out, models, tokenizer, heldout, dc)
    export = st.run("export", export_hf, out, extended, tokenizer)
    info = {
        "fast": fast,
        "config": asdict(dc),
        "base_loss": final_loss(out / "runs" / "base"),
        "extend_loss": final_loss(out / "runs" / "extended"),
        "export": export,
    }
    report = st.run("report", write_report, out, runs, info, st.timings)
    summary = {
        **info,
        "timings": st.timings,
        "results": {k: v["results"] for k, v in runs.items()},
        "perplexity": {k: {n: p["ppl"] for n, p in v["perplexity"].items()} for k, v in runs.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(report.read_text())
    print(f"results: {report} and {out / 'results.png'}; total {sum(st.timings.values()):.0f} s")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fast", action="store_true", help="tiny sizes (< 3 min): checks the pipeline only")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of corpus, data order and initialisation")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run_demo(args.out, FAST if args.fast else FULL, args.fast, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
