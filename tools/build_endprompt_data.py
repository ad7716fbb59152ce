#!/usr/bin/env python3
"""Build EndPrompt training samples (megatron IndexedDataset .bin/.idx + segment sidecar + meta.json).

Example:
  python tools/build_endprompt_data.py --input 'corpus/*.jsonl.gz' --output-prefix data/slimpj_ep \\
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model ~/llama3 --append-eod --workers 8 \\
      --scheme endprompt --seq-length 8192 --target-length 65536 \\
      --cue "This is the end of text, please pay attention here" --cue @token:<|eot_id|> --cue "End."
  python tools/build_endprompt_data.py --output-prefix data/slimpj_ep --report   # coverage of an existing build
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from megatron_endprompt.data.packing import PACKING_MODES
from megatron_endprompt.data.tokenizers import DEFAULT_MAX_CHARS_PER_ENCODE

EXIT_USER_ERROR = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input/output (Megatron-LM preprocess_data.py flags)")
    io.add_argument("--input", nargs="+", help="files or globs: .jsonl, .jsonl.gz, .parquet, .txt")
    io.add_argument("--json-keys", nargs="+", default=["text"], help="keys/columns holding the text")
    io.add_argument("--output-prefix", required=True, help="writes <prefix>.bin/.idx/.seg/.meta.json")
    io.add_argument("--tokenizer-type", choices=["SentencePieceTokenizer", "HuggingFaceTokenizer"])
    io.add_argument(
        "--tokenizer-model", help="a .model file, a tokenizer.json or a local tokenizer directory"
    )
    io.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    io.add_argument("--append-eod", action="store_true", help="append the EOD token after each document")
    io.add_argument(
        "--prepend-bos",
        action="store_true",
        help="put the BOS token before each document (default off; Llama-3 continued pretraining expects it)",
    )
    sc = p.add_argument_group("samples and positions")
    sc.add_argument(
        "--scheme",
        default="contiguous",
        choices=["contiguous", "endprompt", "endprompt-tail", "pose", "endprompt-pose"],
    )
    sc.add_argument("--seq-length", type=int, default=8192, help="P, physical tokens per sample")
    sc.add_argument("--target-length", type=int, default=None, help="T, largest position id + 1 (default P)")
    sc.add_argument("--terminal-length", type=int, default=20, help="K for endprompt-tail")
    sc.add_argument(
        "--cue", action="append", default=[], help="a cue: text, @eod or @token:NAME (repeatable)"
    )
    sc.add_argument("--cue-file", help="file with one cue per line (same syntax as --cue)")
    sc.add_argument(
        "--placement", choices=["fixed", "random"], default="fixed", help="endprompt-tail placement"
    )
    sc.add_argument(
        "--tail-source",
        choices=["sample", "document"],
        default="sample",
        help="endprompt-tail: the sample's own last K tokens (sample), or the released collator's: the document's "
        "last K tokens after the sample's first P-K, its middle skipped, jumping only when the document is longer "
        "than its room (document; needs --packing aligned or document)",
    )
    sc.add_argument("--pose-chunks", type=int, default=2, help="N chunks for pose / endprompt-pose")
    sc.add_argument(
        "--packing",
        choices=list(PACKING_MODES),
        default="concat",
        help="concat: one token stream cut into samples; aligned: every sample starts at a document start (the "
        "overflowing document is cut, its rest dropped); document: one document per sample",
    )
    sc.add_argument("--seed", type=int, default=1234)
    sc.add_argument(
        "--strict", action="store_true", help="stop at the first bad document (file:line: reason)"
    )
    sc.add_argument("--batch-docs", type=int, default=256, help="documents per worker task")
    sc.add_argument(
        "--max-chars-per-encode",
        type=int,
        default=DEFAULT_MAX_CHARS_PER_ENCODE,
        help="tokenize longer documents in pieces cut at whitespace past this many characters (bounds memory; "
        "0 = whole documents; see docs/data_format.md)",
    )
    rp = p.add_argument_group("coverage report")
    rp.add_argument(
        "--report", action="store_true", help="print the relative-distance coverage and write a PNG"
    )
    rp.add_argument("--report-samples", type=int, default=2048, help="samples read for the report (0 = all)")
    rp.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _config(args: argparse.Namespace):
    from megatron_endprompt.data.builder import BuildConfig
    from megatron_endprompt.positions import SchemeConfig

    for flag in ("input", "tokenizer_type", "tokenizer_model"):
        if not getattr(args, flag):
            raise ValueError(f"--{flag.replace('_', '-')} is required to build (omit it only with --report)")
    cues = list(args.cue)
    if args.cue_file:
        lines = Path(args.cue_file).read_text(encoding="utf-8").splitlines()
        cues += [line for line in lines if line.strip()]
    scheme = SchemeConfig(
        scheme=args.scheme,
        seq_length=args.seq_length,
        target_length=args.target_length or args.seq_length,
        terminal_length=args.terminal_length,
        placement=args.placement,
        pose_chunks=args.pose_chunks,
        tail_source=args.tail_source,
    )
    return BuildConfig(
        input=args.input,
        output_prefix=args.output_prefix,
        tokenizer_type=args.tokenizer_type,
        tokenizer_model=args.tokenizer_model,
        scheme=scheme,
        json_keys=args.json_keys,
        cues=cues,
        packing=args.packing,
        append_eod=args.append_eod,
        prepend_bos=args.prepend_bos,
        seed=args.seed,
        workers=args.workers,
        strict=args.strict,
        batch_docs=args.batch_docs,
        max_chars_per_encode=args.max_chars_per_encode,
        progress=not args.no_progress,
    )


def _summary(meta: dict) -> str:
    c = meta["counts"]
    skipped = ", ".join(f"{k}={v}" for k, v in c["skipped"].items() if v) or "none"
    t = meta["throughput"]
    return (
        f"documents read {c['documents_read']}, used {c['documents_used']}, skipped: {skipped}\n"
        f"samples {c['samples']}, tokens {c['tokens']} (text {c['text_tokens']}, cue {c['cue_tokens']}), "
        f"truncated {c['tokens_truncated']}, dropped tail {c['tokens_dropped_tail']}\n"
        f"{t['seconds']} s, {t['tokens_per_second']:.0f} tokens/s with {t['workers']} worker(s)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.input or not args.report:
            from megatron_endprompt.data.builder import build

            meta = build(_config(args))
            print(_summary(meta))
        if args.report:
            from megatron_endprompt.data.coverage import coverage_report

            report = coverage_report(args.output_prefix, max_samples=args.report_samples or None)
            print(report.to_text())
            png = report.save_png(f"{args.output_prefix}.coverage.png")
            print(f"wrote {png}")
            print(json.dumps(report.summary(), sort_keys=True))
    except OSError as exc:  # a file that cannot be read or written: its path and the reason, no traceback
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (ValueError, RuntimeError) as exc:  # bad flags or input, --strict stops, 0 samples
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
