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
rather than PI because at this scale PI by 8 erases in-context retrieval, which YaRN keeps. This file holds the
recipe (`DemoConfig`, `FULL`, `FAST`), the stages and the report; the machinery it shares with the examples
(datasets, training runs, scaling-only copies, evaluation) is `megatron_endprompt.experiments`, its figure
`eval.plots.comparison_plot`.

`--fast` shrinks every stage (a test runs it in CI); its numbers only show that the pipeline runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from megatron_endprompt import experiments
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
        return experiments.rope_scaling("yarn", self.factor, self.base_length)


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
    focused = experiments.focused_corpus(
        replace(cfg, documents=half, seed=seed + 3), dc.focus_passkey_weight, dc.focus_words
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
        "focus": write_corpus(out / "corpus" / "focus.jsonl", focused),
    }
    logger.info("corpus: %s (%.2f MB)", paths["train"], paths["train"].stat().st_size / 1e6)
    return paths


def make_tokenizer(out: Path, corpus: Path, dc: DemoConfig) -> Path:
    """A SentencePiece model trained on the corpus text (digits split: keys are copied digit by digit)."""
    return experiments.train_tokenizer(corpus, out / "tokenizer" / "demo", dc.vocab_size)


def build_data(
    out: Path, corpus: dict[str, Path], tokenizer: Path, dc: DemoConfig, seed: int
) -> dict[str, str]:
    """Warm-up samples, contiguous samples at P0 (base) and EndPrompt samples (P0 physical, positions up to T),
    every sample starting at a document start (`--packing aligned`: no question without its needle)."""
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
        meta = experiments.build_dataset(
            source, prefix, tokenizer, scheme, cues, packing="aligned", seed=seed
        )
        logger.info("data %s: %s", name, meta.get("counts"))
        prefixes[name] = prefix
    return prefixes


# ---------------------------------------------------------------------------------------------- stages 4-6


def base_stage(
    out: Path,
    name: str,
    data_prefix: str,
    length: int,
    steps: int,
    dc: DemoConfig,
    seed: int,
    init_from: Path | str | None = None,
) -> experiments.RunSpec:
    """One base pretraining run at `length` tokens per sample, `dc.base_tokens_per_step` tokens per step."""
    return experiments.RunSpec(
        data_prefix,
        length,
        dc.base_tokens_per_step // length,
        steps,
        dc.lr,
        str(out / "runs" / name),
        seed,
        init_from=None if init_from is None else str(init_from),
    )


def scaling_only(out: Path, base_ckpt: Path, dc: DemoConfig) -> Path:
    """Base weights with the extension's YaRN scaling and no fine-tuning (`<out>/runs/pi_only`)."""
    return experiments.config_copy(base_ckpt, out / "runs" / "pi_only", {"rope_scaling": dc.rope_scaling()})


# ---------------------------------------------------------------------------------------------- stages 7-9


def evaluate_models(
    out: Path, models: dict[str, Path], tokenizer: Path, heldout: Path, dc: DemoConfig
) -> dict[str, dict]:
    """Passkey, NIAH (RULER niah_single_1) and held-out perplexity at every eval length for each model."""
    from megatron_endprompt.eval.runner import evaluate

    runs = {}
    for label, ckpt in models.items():
        backend, tok = experiments.open_checkpoint(ckpt, tokenizer)
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
            task_options=experiments.task_options(EVAL_TASKS, dc.passkey_max, dc.value_digits),
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
    """`eval.plots.comparison_plot` of the eval tasks and perplexity, P0 and T marked; a --fast run's figure
    says that its numbers mean nothing."""
    from megatron_endprompt.eval.plots import OVERLAP_NOTE, comparison_plot

    caption = OVERLAP_NOTE
    if fast:
        caption = "--fast: a pipeline check with tiny models; these numbers are NOT meaningful. " + caption
    window, target = dc["base_length"], dc["base_length"] * dc["factor"]
    color = "firebrick" if fast else "black"
    return comparison_plot(runs, path, EVAL_TASKS, window, target, caption, caption_color=color)


# ---------------------------------------------------------------------------------------------- main


def run_demo(out: Path, dc: DemoConfig, fast: bool, seed: int = 0) -> dict:
    """All stages; returns a summary dict (also written to <out>/summary.json)."""
    out.mkdir(parents=True, exist_ok=True)
    st = Stages()
    corpus = st.run("corpus", make_corpus, out, dc, seed)
    heldout = corpus["heldout"]
    tokenizer = st.run("tokenizer", make_tokenizer, out, corpus["train"], dc)
    data = st.run("data", build_data, out, corpus, tokenizer, dc, seed)
    model = dc.model_overrides()
    warmup = experiments.recipe(
        base_stage(out, "warmup", data["warmup"], dc.warmup_length, dc.warmup_steps, dc, seed), model
    )
    warmup["optimizer"].update(experiments.constant_lr(dc.lr, dc.warmup_steps))
    base = st.run("warmup", experiments.run_training, out, "warmup", warmup)
    base_run = base_stage(out, "base", data["base"], dc.base_length, dc.base_steps, dc, seed, init_from=base)
    base = st.run("base", experiments.run_training, out, "base", experiments.recipe(base_run, model))
    ext_run = experiments.RunSpec(
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
    extended = st.run(
        "extend", experiments.run_training, out, "extended", experiments.recipe(ext_run, ext_model)
    )
    models = {"base": base, "yarn_only": scaling_only(out, base, dc), "extended": extended}
    runs = st.run("eval", evaluate_models, out, models, tokenizer, heldout, dc)
    export = st.run("export", export_hf, out, extended, tokenizer)
    info = {
        "fast": fast,
        "config": asdict(dc),
        "base_loss": experiments.final_loss(out / "runs" / "base"),
        "extend_loss": experiments.final_loss(out / "runs" / "extended"),
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
