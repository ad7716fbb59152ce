#!/usr/bin/env python3
"""Peak memory of the builder on one very long single-line document (issue 17: 50 MB took 6.7 GB).

Writes a JSONL file holding ONE document of --size-mb MB (words and whitespace, no newline in the line), trains a
byte-level BPE tokenizer.json (Hugging Face `tokenizers`, offline), and runs tools/build_endprompt_data.py on it as
a subprocess once per --max-chars-per-encode value (0 = the whole document in one `encode` call, the behaviour
before pieces). Peak RSS is the builder process's ru_maxrss from wait4. The .bin files of the runs are compared
byte for byte (same tokens or not). Results go to benchmarks/results/builder_long_document.{json,md}.

  python benchmarks/builder_long_document.py [--size-mb 50] [--max-chars 1000000 0] [--limit-gb 1.0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_endprompt.machine import cpu_name  # noqa: E402

SEPARATORS = (" ",) * 12 + ("  ", "\n", "\n\n", ", ", ". ")


def write_long_document(path: Path, size_mb: float, seed: int = 0) -> int:
    """One JSON line `{"text": ...}` whose text has about size_mb * 1e6 characters; returns the text length."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    target, written = int(size_mb * 1e6), 0
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"text": "')
        while written < target:
            chunk = "".join(rng.choice(vocab) + rng.choice(SEPARATORS) for _ in range(20000))
            f.write(json.dumps(chunk)[1:-1])  # escaped, so the document stays on one line
            written += len(chunk)
        f.write('"}\n')
    return written


def train_tokenizer(directory: Path, seed: int = 0) -> Path:
    """A byte-level BPE tokenizer.json (GPT-2 / Llama-3 style pre-tokenizer), vocab 8000, with </s> as EOD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(seed + 1)
    sample = Path(directory / "sample.txt")
    write_long_document(sample, 2.0, seed)  # same word distribution as the document
    text = json.loads(sample.read_text())["text"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8000, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    lines = text.split("\n")
    rng.shuffle(lines)
    tok.train_from_iterator(lines, trainer)
    out = directory / "tokenizer"
    out.mkdir()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    return out


def run_builder(doc: Path, tokenizer: Path, prefix: Path, max_chars: int, seq_length: int) -> dict:
    """One CLI build in a subprocess: wall seconds, peak RSS (wait4 ru_maxrss), exit code, counts, .bin hash."""
    cmd = [
        sys.executable, str(ROOT / "tools" / "build_endprompt_data.py"), "--input", str(doc),
        "--output-prefix", str(prefix), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
        str(tokenizer), "--seq-length", str(seq_length), "--append-eod", "--no-progress",
        "--max-chars-per-encode", str(max_chars),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = Path(f"{prefix}.log")
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        # wait4 reaps the child ourselves: it returns that process's own resource usage (peak RSS).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    output = log.read_text().strip().splitlines()
    meta_path = Path(f"{prefix}.meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    bin_path = Path(f"{prefix}.bin")
    return {
        "max_chars_per_encode": max_chars,
        "exit_code": proc.returncode,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "tokens_read": meta["counts"]["tokens_read"] if meta else None,
        "samples": meta["counts"]["samples"] if meta else None,
        "bin_sha256": hashlib.sha256(bin_path.read_bytes()).hexdigest() if bin_path.is_file() else None,
        "output_tail": output[-2:],
    }


def machine() -> dict:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024**2, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Builder: peak memory on one very long document",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['memory_gb']} GB RAM, Python {m['python']}. "
        f"Date: {result['date']}.",
        "",
        f"Load: {result['load_note']}",
        "",
        f"Input: one JSONL line, a document of {result['document_chars']:,} characters (words and whitespace), "
        f"byte-level BPE tokenizer.json (vocab {result['vocab_size']}), contiguous, P={result['seq_length']}, "
        "1 worker (the main process tokenizes).",
        "",
        "| --max-chars-per-encode | exit | peak RSS (MB) | wall (s) | tokens | samples | .bin sha256 (first 12) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        label = f"{r['max_chars_per_encode']:,}" if r["max_chars_per_encode"] else "0 (whole document)"
        sha = (r["bin_sha256"] or "-")[:12]
        lines.append(
            f"| {label} | {r['exit_code']} | {r['peak_rss_mb']:,.0f} | {r['seconds']} | {r['tokens_read']} "
            f"| {r['samples']} | {sha} |"
        )
    lines += [
        "",
        f"Limit checked: peak RSS <= {result['limit_gb']} GB with pieces: "
        f"{'yes' if result['within_limit'] else 'NO'}. "
        f"Same .bin with and without pieces: {result['same_tokens']}.",
        "",
        "Peak RSS is the builder process's maximum resident set (wait4 ru_maxrss); it counts the process's own",
        "pages, so other work on the machine changes the wall time, not this number.",
    ]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=50.0, help="document size in millions of characters")
    ap.add_argument("--max-chars", type=int, nargs="+", default=[1_000_000, 0], help="0 = whole document")
    ap.add_argument("--seq-length", type=int, default=8192)
    ap.add_argument("--limit-gb", type=float, default=1.0, help="peak RSS bound checked for the piece runs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "builder_long_document"))
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="ep_longdoc_"))
    doc = work / "long.jsonl"
    chars = write_long_document(doc, args.size_mb)
    tokenizer = train_tokenizer(work)
    runs = [run_builder(doc, tokenizer, work / f"out_{mc}", mc, args.seq_length) for mc in args.max_chars]
    load_after = os.getloadavg()
    loaded = max(load_before[0], load_after[0]) > 0.5
    pieces = [r for r in runs if r["max_chars_per_encode"]]
    hashes = {r["bin_sha256"] for r in runs if r["exit_code"] == 0}
    result = {
        "command": "python " + shlex.join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "load_note": (
            f"load average {load_before[0]:.1f} before and {load_after[0]:.1f} after on "
            f"{os.cpu_count()} CPUs: "
            + ("the machine was shared with other work during the runs" if loaded else "the machine was idle")
        ),
        "document_chars": chars,
        "document_bytes": doc.stat().st_size,
        "vocab_size": 8000,
        "seq_length": args.seq_length,
        "limit_gb": args.limit_gb,
        "runs": runs,
        "within_limit": bool(pieces) and all(r["peak_rss_mb"] <= args.limit_gb * 1024 for r in pieces),
        "same_tokens": (len(hashes) == 1) if len(runs) > 1 else None,
    }
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    Path(args.out + ".md").write_text(text)
    print(text)
    return 0 if result["within_limit"] and all(r["exit_code"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
