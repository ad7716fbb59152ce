#!/usr/bin/env python3
"""Builder throughput vs the tokenizer's raw throughput on the same text.

Raw: `tokenizer.encode` over the documents already in memory, one process. Builder: the full
tools/build_endprompt_data.py pipeline (read + JSON + tokenise + pack + write) at 1 and 2 workers. Target:
builder tokens/s >= 0.8 x raw tokens/s x workers. Without --input a synthetic corpus and a SentencePiece
tokenizer are generated (offline). Results go to benchmarks/results/builder_throughput.{json,md}.

  python benchmarks/builder_throughput.py [--docs 20000] [--workers 1 2] [--input x.jsonl --tokenizer-type ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_endprompt.data.builder import BuildConfig, build  # noqa: E402
from megatron_endprompt.data.corpus import decode_doc, expand_inputs, iter_documents  # noqa: E402
from megatron_endprompt.data.tokenizers import load_tokenizer, train_sentencepiece  # noqa: E402
from megatron_endprompt.machine import cpu_name  # noqa: E402
from megatron_endprompt.positions import SchemeConfig  # noqa: E402


def synthetic_corpus(path: Path, docs: int, seed: int = 0) -> None:
    """Zipf-like words over a 5000-word vocabulary, 50-1500 words per document."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(docs):
            words = rng.choices(vocab, weights, k=rng.randint(50, 1500))
            f.write(json.dumps({"text": " ".join(words) + "."}) + "\n")


def cpu_split() -> tuple[float, float]:
    """CPU seconds of this process and of its reaped children (the builder's worker pool)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def cpu_seconds() -> float:
    return sum(cpu_split())


def raw_throughput(files, keys, tokenizer, repeats: int) -> dict:
    """Best of `repeats` passes of tokenizer.encode over the in-memory texts (the machine is shared)."""
    texts = [t for t, r in (decode_doc(d, keys) for d in iter_documents(files, keys)) if r is None]
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        c0, start = cpu_seconds(), time.perf_counter()
        tokens = sum(len(tokenizer.encode(t)) for t in texts)
        best, cpu = min(best, time.perf_counter() - start), min(cpu, cpu_seconds() - c0)
    return {
        "tokens": tokens,
        "seconds": round(best, 3),
        "tokens_per_second": round(tokens / best, 1),
        "cpu_seconds": round(cpu, 3),
    }


def builder_run(cfg: BuildConfig, repeats: int) -> dict:
    """Best of `repeats` full builds: wall-clock tokens/s and CPU seconds (all processes)."""
    best = None
    for _ in range(repeats):
        m0, k0 = cpu_split()
        meta = build(cfg)
        m1, k1 = cpu_split()
        if best is None or meta["throughput"]["seconds"] < best[0]["throughput"]["seconds"]:
            best = (meta, m1 - m0, k1 - k0)
    meta, main_cpu, worker_cpu = best
    return {
        "meta": meta,
        "cpu_seconds": round(main_cpu + worker_cpu, 3),
        "main_cpu_seconds": round(main_cpu, 3),
        "worker_cpu_seconds": round(worker_cpu, 3),
    }


def machine() -> dict:
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="+")
    ap.add_argument("--tokenizer-type", default="SentencePieceTokenizer")
    ap.add_argument("--tokenizer-model")
    ap.add_argument("--docs", type=int, default=20000, help="synthetic documents when --input is not given")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--scheme", default="endprompt")
    ap.add_argument("--seq-length", type=int, default=8192)
    ap.add_argument("--target-length", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=3, help="best of N (the machine may be shared)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "builder_throughput"))
    return ap.parse_args()


def run_builders(args: argparse.Namespace, files: list[str], raw: dict, work: Path) -> list[dict]:
    """One best-of-N build per worker count, with its ratios to the raw tokenizer."""
    runs = []
    for workers in args.workers:
        cfg = BuildConfig(
            input=files,
            output_prefix=str(work / f"out_w{workers}"),
            tokenizer_type=args.tokenizer_type,
            tokenizer_model=args.tokenizer_model,
            append_eod=True,
            workers=workers,
            scheme=SchemeConfig(args.scheme, args.seq_length, args.target_length),
            cues=["This is the end of text, please pay attention here", "End.", "@eod"],
        )
        run = builder_run(cfg, args.repeats)
        tps = run["meta"]["throughput"]["tokens_per_second"]
        runs.append(
            {
                "workers": workers,
                "seconds": run["meta"]["throughput"]["seconds"],
                "tokens_per_second": tps,
                "ratio_to_raw_x_workers": round(tps / (raw["tokens_per_second"] * workers), 3),
                "cpu_seconds": run["cpu_seconds"],
                "main_process_cpu_seconds": run["main_cpu_seconds"],
                "worker_cpu_seconds": run["worker_cpu_seconds"],
                "cpu_efficiency_vs_raw": round(raw["cpu_seconds"] / run["cpu_seconds"], 3),
                "samples": run["meta"]["counts"]["samples"],
            }
        )
    return runs


def markdown(result: dict, args: argparse.Namespace) -> str:
    """The results table with machine, command and load."""
    raw, m = result["raw"], result["machine"]
    lines = [
        "# Builder throughput",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, Python {m['python']}. Date: {result['date']}.",
        "",
        f"Input: {result['input_bytes'] / 1e6:.1f} MB JSONL, tokenizer {result['tokenizer']} "
        f"(vocab {result['vocab_size']}), scheme {args.scheme}, P={args.seq_length}, T={args.target_length}.",
        "",
        f"Load average before the runs: {result['load_average_before']}. Best of {args.repeats} runs each.",
        "",
        "| run | tokens/s | ratio to raw x workers | CPU s (all) | CPU s main / workers | CPU efficiency vs raw |",
        "|---|---|---|---|---|---|",
        f"| raw `encode`, 1 process | {raw['tokens_per_second']:,.0f} | 1.000 | {raw['cpu_seconds']} | - | 1.000 |",
    ]
    lines += [
        f"| builder, {r['workers']} worker(s) | {r['tokens_per_second']:,.0f} | {r['ratio_to_raw_x_workers']:.3f} "
        f"| {r['cpu_seconds']} | {r['main_process_cpu_seconds']} / {r['worker_cpu_seconds']} "
        f"| {r['cpu_efficiency_vs_raw']:.3f} |"
        for r in result["builder"]
    ]
    lines += [
        "",
        "CPU efficiency = raw CPU seconds / builder CPU seconds for the same tokens: the builder's overhead",
        "(reading, JSON, packing, writing, inter-process transfer) independent of how busy the machine is.",
    ]
    if float(result["load_average_before"].split(",")[0]) > m["cpu_count"]:
        lines += [
            "",
            f"Warning: the load average exceeded the {m['cpu_count']} CPUs, so wall-clock ratios (above all with 2",
            "workers) measure contention, not the builder; rerun on an idle machine for the >= 0.8 target.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="ep_bench_"))
    if not args.input:
        synthetic_corpus(work / "corpus.jsonl", args.docs)
        args.input = [str(work / "corpus.jsonl")]
    if not args.tokenizer_model:
        with open(args.input[0], encoding="utf-8") as f:
            sample = [json.loads(line)["text"] for line, _ in zip(f, range(2000), strict=False)]
        args.tokenizer_model = train_sentencepiece(sample, work / "sp", vocab_size=8000)
    files = expand_inputs(args.input)
    tok = load_tokenizer(args.tokenizer_type, args.tokenizer_model)
    raw = raw_throughput(files, ["text"], tok, args.repeats)
    result = {
        "load_average_before": load_before,
        "command": "python " + shlex.join(sys.argv),
        "machine": machine(),
        "input_bytes": sum(os.path.getsize(f) for f in files),
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "raw": raw,
        "builder": run_builders(args, files, raw, work),
        "target": ">= 0.8 x raw x workers",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, args)
    Path(args.out + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
