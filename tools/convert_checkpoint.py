#!/usr/bin/env python
"""Convert LLaMA checkpoints between Hugging Face and our megatron-core distributed format.

  python tools/convert_checkpoint.py hf-to-megatron --hf-dir IN --megatron-dir OUT [--tp N] [--pp N]
  python tools/convert_checkpoint.py hf-to-megatron --gguf-file F.gguf --megatron-dir OUT [--dtype bfloat16]
  python tools/convert_checkpoint.py megatron-to-hf --megatron-dir IN --hf-dir OUT [--hf-dialect v4|v5]

The logic lives in `megatron_endprompt.convert`; see docs/conversion.md.
"""

from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    imp = sub.add_parser("hf-to-megatron", help="HF LlamaForCausalLM dir -> megatron dist checkpoint dir")
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf-dir", help="HF model dir (config.json + *.safetensors)")
    source.add_argument(
        "--gguf-file", help="a llama GGUF file, dequantized through transformers (the gguf extra)"
    )
    imp.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                     help="with --gguf-file: dtype of the dequantized weights (default float32)")  # fmt: skip
    imp.add_argument("--megatron-dir", required=True, help="output checkpoint dir")
    imp.add_argument(
        "--tp", type=int, default=1, help="tensor-parallel size the checkpoint is meant for (vocab padding)"
    )
    imp.add_argument(
        "--pp", type=int, default=1, help="pipeline-parallel size the checkpoint is meant for (checked)"
    )
    imp.add_argument("--allow-pickle", action="store_true", help="accept pytorch_model*.bin (pickle) weights")

    exp = sub.add_parser("megatron-to-hf", help="megatron checkpoint dir (or training save root) -> HF dir")
    exp.add_argument(
        "--megatron-dir", required=True, help="checkpoint dir, or a training save dir with `latest`"
    )
    exp.add_argument("--hf-dir", required=True, help="output HF model dir")
    exp.add_argument("--hf-dialect", choices=("v4", "v5"), default=None,
                     help="config.json RoPE dialect (default: as imported, else v4)")  # fmt: skip
    exp.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                     help="weight dtype (default: as stored)")  # fmt: skip
    exp.add_argument("--hf-reference", default=None,
                     help="HF dir (or converted dir) whose config.json extras and tokenizer files to carry over; "
                          "default: those recorded in the checkpoint")  # fmt: skip
    exp.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors shard, GiB")

    for p in (imp, exp):
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty output dir")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from megatron_endprompt.convert import ConversionError, hf_to_megatron, megatron_to_hf

    try:
        if args.command == "hf-to-megatron" and args.gguf_file:
            from megatron_endprompt.convert.gguf_io import gguf_to_megatron

            summary = gguf_to_megatron(
                args.gguf_file, args.megatron_dir, args.dtype or "float32", tp=args.tp, pp=args.pp,
                overwrite=args.overwrite, progress=not args.no_progress,
            )  # fmt: skip
        elif args.command == "hf-to-megatron" and args.dtype:
            raise ConversionError(
                "--dtype applies to --gguf-file; an --hf-dir keeps the dtype it is stored in"
            )
        elif args.command == "hf-to-megatron":
            summary = hf_to_megatron(
                args.hf_dir, args.megatron_dir, tp=args.tp, pp=args.pp, overwrite=args.overwrite,
                allow_pickle=args.allow_pickle, progress=not args.no_progress,
            )  # fmt: skip
        else:
            summary = megatron_to_hf(
                args.megatron_dir, args.hf_dir, dialect=args.hf_dialect, dtype=args.dtype,
                overwrite=args.overwrite, max_shard_bytes=int(args.max_shard_gb * 1024**3),
                hf_reference=args.hf_reference, progress=not args.no_progress,
            )  # fmt: skip
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.command}: wrote {summary.output_dir} ({summary.num_tensors} HF tensors, "
        f"{summary.num_elements:,} elements, {summary.dtype}) in {summary.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
