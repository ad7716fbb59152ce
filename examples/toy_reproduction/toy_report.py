"""The toy reproduction's report: markdown tables (scores by length, by depth), the plot, the recorded
command and hardware. Pure functions of `results.json` (so `--report-only` rebuilds a report from it)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml
from toy_config import SCALING_NAMES
from toy_contrasts import contrast_section, local_retrieval_section

from megatron_endprompt.machine import cpu_name


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def score(row: dict, task: str, length: int) -> tuple[float, float]:
    """Mean and std over seeds of the task score (perplexity: ppl; `<task>_answer_nll`: answer NLL) at one length."""
    if task.endswith(NLL_SUFFIX):
        return _mean_std([e["answer_nll"][task[: -len(NLL_SUFFIX)]][str(length)] for e in row["evals"]])
    if task in ("perplexity", "perplexity_tail"):
        key = "ppl" if task == "perplexity" else "tail_ppl"
        return _mean_std([e["perplexity"][str(length)][key] for e in row["evals"]])
    return _mean_std([e["results"][task][str(length)] for e in row["evals"]])


NLL_SUFFIX = "_answer_nll"


def report_tasks(cfg: dict) -> list[str]:
    """Tables / panels of the report: every task with its teacher-forced answer NLL, perplexity also over the
    last quarter of each window."""
    out = []
    for task in cfg["eval_tasks"]:
        out += [task, "perplexity_tail"] if task == "perplexity" else [task, task + NLL_SUFFIX]
    return out


def is_graded(task: str) -> bool:
    """Tables with two decimals and a log axis (perplexities, NLLs) rather than accuracies in %."""
    return task.startswith("perplexity") or task.endswith(NLL_SUFFIX)


def base_recipe(cfg: dict) -> str:
    """One sentence on how the base was trained (stages, steps, tokens per step, focus stage)."""
    stages = ", ".join(
        f"{n} steps at {s}" for s, n in zip(cfg["base_curriculum"], cfg["base_steps"], strict=True)
    )
    warmup = ""
    if cfg.get("warmup_steps"):
        warmup = (
            f"a warm-up of {cfg['warmup_steps']} steps at {cfg['base_curriculum'][0]} (constant LR "
            f"{cfg.get('warmup_lr')}) on passkey documents alone (haystacks up to {cfg['warmup_max_words']} "
            "words; a separate draw, never used by the extension variants), then "
        )
        stages += " on the general corpus"
    text = (
        f"Base pretraining: {warmup}{stages} ({cfg['base_tokens_per_step']} tokens per step, "
        f"peak LR {cfg['base_lr']})"
    )
    if cfg.get("focus_steps"):
        text += (
            f", then {cfg['focus_steps']} steps at P0 on a retrieval-focused corpus from the same generator "
            f"(retrieval documents only, passkeys weighted {cfg['focus_passkey_weight']}:1:1 against magic "
            f"numbers and recall lists, haystacks {cfg.get('focus_min_words', 5)}.."
            f"{cfg.get('focus_max_words', cfg['max_words'])} words; never used by the extension variants)"
        )
    text += f". Every dataset is packed with `--packing {cfg.get('packing', 'concat')}`"
    return (
        text + f". Keys: passkeys 1..{cfg.get('passkey_max')}, {cfg.get('value_digits')}-digit magic numbers."
    )


def data_note(cfg: dict) -> str:
    """The extension corpus and the paper variant's cue set, as run (older results record neither)."""
    corpus = cfg.get("extend_corpus", "mixed")
    what = (
        "the base's general corpus (80% retrieval documents in the evaluation's templates)"
        if corpus == "mixed"
        else "a generic corpus of the same generator without retrieval or copy documents (corpus control)"
    )
    cues = cfg.get("endprompt_cues")
    cue_text = "; ".join(repr(c) for c in cues) if cues else "the three paper cues (EP_1, EP_2, EP_3)"
    return (
        f"Extension data: {what}. Cue set of `endprompt` / `endprompt_pose`: {cue_text}. Within a seed every "
        "variant's training order is keyed by the seed and the source corpus (tests/unit/test_data_shared_order.py)."
    )


def precision_note(cfg: dict) -> str:
    """How precise an accuracy cell is: prompts per cell and the worst-case binomial standard error."""
    per_cell = len(cfg["eval_depths"]) * cfg["eval_samples"] * len(cfg["seeds"])
    return (
        f"Each accuracy cell pools {per_cell} prompts ({len(cfg['eval_depths'])} depths x "
        f"{cfg['eval_samples']} prompts x {len(cfg['seeds'])} seeds; the base row has one seed): binomial "
        f"standard error <= {50 / per_cell**0.5:.1f} points (at 50%), smaller near 0% and 100%."
    )


def compute_minutes(rows: dict) -> str:
    """Time summed over every cached run (true however the runs were split over processes or invocations)."""
    train = sum(sum(r["seconds"]) if isinstance(r["seconds"], list) else r["seconds"] for r in rows.values())
    evals = sum(e.get("elapsed_s", 0.0) for r in rows.values() for e in r["evals"])
    return f"training {train / 60:.0f} min and evaluation {evals / 60:.0f} min, summed over runs"


def recorded_command(argv: list[str]) -> str:
    """The command line as run, without `--note` (the note is printed under the report)."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--note="):
            skip = False
            continue
        skip = arg == "--note"
        if not skip:
            kept.append(arg)
    return "python " + " ".join(shlex.quote(a) for a in kept)


def depth_table(rows: dict, cfg: dict, task: str) -> list[str]:
    """Accuracy by needle depth at the longest eval length (mean over seeds): where retrieval breaks first."""
    n = str(max(cfg["eval_lengths"]))
    depths = [d for d in rows["base"]["evals"][0].get("depth_detail", {}).get(task, {}).get(n, {})]
    if not depths:
        return []
    lines = [f"## {task} at {n} tokens by needle depth", "", "| variant | " + " | ".join(depths) + " |"]
    lines.append("|---|" + "---:|" * len(depths))
    for name, row in rows.items():
        cells = [_mean_std([e["depth_detail"][task][n][d] for e in row["evals"]])[0] for d in depths]
        lines.append(f"| {row_label(name, cfg)} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
    return [*lines, ""]


PAIRED_REFERENCE = "contiguous_short"


def seed_table(rows: dict, cfg: dict, task: str) -> list[str]:
    """Each seed's accuracy at the longest length and its difference from contiguous short of the same seed.
    The variants of one seed read the same samples in the same order and are evaluated on the same prompts,
    so these pairs are firmer evidence than the means when seeds spread widely."""
    if len(cfg["seeds"]) < 2 or PAIRED_REFERENCE not in rows:
        return []
    n = str(max(cfg["eval_lengths"]))
    reference = [e["results"][task][n] for e in rows[PAIRED_REFERENCE]["evals"]]
    seeds = " | ".join(f"seed {s}" for s in cfg["seeds"])
    lines = [
        f"## {task} at {n} tokens per seed, paired with {PAIRED_REFERENCE}",
        "",
        f"| variant | {seeds} | minus {PAIRED_REFERENCE}, per seed | better in |",
        "|---|" + "---:|" * len(cfg["seeds"]) + "---:|---:|",
    ]
    for name, row in rows.items():
        if name in ("base", PAIRED_REFERENCE):
            continue
        scores = [e["results"][task][n] for e in row["evals"]]
        diffs = [a - b for a, b in zip(scores, reference, strict=True)]
        lines.append(
            f"| {row_label(name, cfg)} | " + " | ".join(f"{v:.0f}" for v in scores)
            + " | " + " / ".join(f"{d:+.0f}" for d in diffs)
            + f" | {sum(d > 0 for d in diffs)} of {len(diffs)} |"
        )  # fmt: skip
    reference_cells = " | ".join(f"{v:.0f}" for v in reference)
    lines.insert(4, f"| {PAIRED_REFERENCE} | {reference_cells} | (reference) | |")
    return [*lines, ""]


def row_label(name: str, cfg: dict) -> str:
    """Report name of a row: `pi_only` is "scaling only", so under YaRN it reads `yarn_only (pi_only)`."""
    scaling = cfg.get("scaling", "linear")
    return f"{scaling}_only (pi_only)" if name == "pi_only" and scaling != "linear" else name


def markdown(results: dict, meta: dict) -> str:
    """The report: what was run, how long it took, and the scores."""
    cfg, rows = results["config"], results["rows"]
    lengths = cfg["eval_lengths"]
    t = cfg["base_length"] * cfg["factor"]
    lines = [
        "# Toy reproduction: context extension variants on a CPU-sized model",
        "",
        f"**Small-scale numbers** from `{meta['command']}` ({meta['date']}, {meta['hardware']}; "
        f"wall time of this invocation {meta['wall_minutes']:.0f} min; {compute_minutes(rows)}).",
        "",
        f"A {cfg['num_layers']}-layer, width-{cfg['hidden_size']} model pretrained at P0 = {cfg['base_length']} "
        f"is extended {cfg['factor']}x to T = {t} ({SCALING_NAMES[cfg.get('scaling', 'linear')]} factor {cfg['factor']}); every variant fine-tunes on the "
        f"same general corpus for {cfg['extend_steps']} steps of {cfg['extend_tokens_per_step']} tokens. "
        f"Task scores: accuracy (%) over {len(cfg['eval_depths'])} depths x {cfg['eval_samples']} prompts; "
        f"perplexity: {cfg.get('ppl_windows')} held-out windows per length, whole window and its last quarter "
        "(`perplexity_tail`; lower is better); `<task>_answer_nll`: mean NLL per token of the right answer, "
        "teacher-forced after the prompt (nats; ln 10 = 2.30 is a uniform guess per digit; graded where "
        "accuracy is all or nothing); "
        f"mean ± std over extension seeds {cfg['seeds']}. Train time includes ~10-20 s of process start-up.",
        "",
        base_recipe(cfg),
        "",
        data_note(cfg),
        "",
        precision_note(cfg),
        "",
    ]
    lines += contrast_section(results) + local_retrieval_section(results)
    if "passkey" in cfg["eval_tasks"] and cfg["base_length"] not in cfg["eval_lengths"]:
        lines += [f"Base model passkey accuracy at P0 = {cfg['base_length']}: not measured here (P0 is not "
                  "among `eval_lengths`).", ""]  # fmt: skip
    elif "passkey" in cfg["eval_tasks"]:
        base_pk, _ = score(rows["base"], "passkey", cfg["base_length"])
        verdict = (
            "strong enough" if base_pk >= 95 else "NOT strong enough: retrieval columns cannot rank methods"
        )
        lines += [
            f"Base model passkey accuracy at P0 = {cfg['base_length']}: {base_pk:.0f}% ({verdict}; the "
            "comparison of retrieval up to T needs >= 95% at P0).",
            "",
        ]
    for task in report_tasks(cfg):
        head = (
            "| variant | P (physical) | train FLOPs | train time (s) | "
            + " | ".join(map(str, lengths))
            + " |"
        )
        lines += [f"## {task}", "", head, "|---|---:|---:|---:|" + "---:|" * len(lengths)]
        for name, row in rows.items():
            secs = row["seconds"] if isinstance(row["seconds"], list) else [row["seconds"]]
            flops = "n/a" if row["flops"] is None else f"{row['flops']:.2e}"
            cells = []
            for n in lengths:
                mean, std = score(row, task, n)
                digits = 2 if is_graded(task) else 0
                cell = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(row["evals"]) > 1 else "")
                cells.append(cell)
            lines.append(
                f"| {row_label(name, cfg)} | {row['physical_length']} | {flops} | {sum(secs) / len(secs):.0f} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    for task in ("passkey", "niah_single_1"):
        if task in cfg["eval_tasks"]:
            lines += seed_table(rows, cfg, task)
    for task in ("passkey", "niah_single_1"):
        if task in cfg["eval_tasks"]:
            lines += depth_table(rows, cfg, task)
    lines += ["Settings:", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path:
    """Accuracy vs prompt length per task, one line per variant (mean over seeds, std as error bar): this
    report's layout, drawn with `megatron_endprompt.eval.plots`' axes and series styles."""
    from megatron_endprompt.eval import plots

    cfg, rows = results["config"], results["rows"]
    tasks = report_tasks(cfg)
    fig, axes = plots.panel_grid(len(tasks), min(2, len(tasks)), 6.5, 4.2)
    window, target = cfg["base_length"], cfg["base_length"] * cfg["factor"]
    for ax, task in zip(axes, tasks, strict=True):
        for i, (name, row) in enumerate(rows.items()):
            stats = [score(row, task, n) for n in cfg["eval_lengths"]]
            ax.errorbar(
                cfg["eval_lengths"],
                [m for m, _ in stats],
                yerr=[s for _, s in stats],
                capsize=3,
                label=row_label(name, cfg),
                **plots.series_style(i, len(rows)),
            )
        plots.length_axis(ax, cfg["eval_lengths"], window, target, "prompt length (tokens)")
        if task.endswith(NLL_SUFFIX):
            ax.axhline(2.303, color="grey", linestyle=":", linewidth=0.8)  # ln 10: a uniform guess per digit
            ax.set_ylabel("answer NLL (nats/token; lower is better)")
        elif task.startswith("perplexity"):
            plots.perplexity_axis(
                ax, "held-out perplexity" + (" (last quarter)" if task.endswith("tail") else "")
            )
        else:
            plots.accuracy_axis(ax)
        ax.set_title(f"{task} (P0 = {window}, T = {target})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Mean over seeds, bars: std over seeds. " + plots.OVERLAP_NOTE, fontsize=9)
    return plots.save_figure(fig, path, dpi=120)


def hardware(jobs: int = 1, threads: int | None = None) -> str:
    """The CPU and how it was shared: `jobs` parallel processes of `threads` torch threads each."""
    machine = f"{cpu_name()}, {os.cpu_count()} cores visible"
    if jobs == 1:
        return f"{machine}, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    return f"{machine}, {jobs} parallel jobs of {threads} torch thread(s) each"
