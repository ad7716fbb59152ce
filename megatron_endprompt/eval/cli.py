"""Command line of tools/eval_long_context.py (kept importable so tests can call `main([...])`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from megatron_endprompt.eval.tasks import DEFAULT_DEPTHS  # not runner: --help must not import torch
from megatron_endprompt.warnings_filter import quiet_upstream_warnings

logger = logging.getLogger(__name__)


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, got {text!r}"
            ) from None

    return parse


def parse_task_option(text: str) -> tuple[str, str, int]:
    """One `--task-option TASK.KEY=INT` as (task, key, value); an argparse type."""
    target, sep, value = text.partition("=")
    task, dot, key = target.partition(".")
    try:
        if not (sep and dot and task and key):
            raise ValueError
        return task, key, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected TASK.KEY=INT (e.g. passkey.key_max=999), got {text!r}"
        ) from None


def task_options(pairs: list[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    """`--task-option` values as {task: {key: value}} (validated by the runner)."""
    out: dict[str, dict[str, int]] = {}
    for task, key, value in pairs:
        out.setdefault(task, {})[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Long-context evaluation (passkey, RULER-style synthetic tasks, perplexity by length) of a "
        "Megatron checkpoint of ours or an HF directory."
    )
    p.add_argument("--checkpoint", required=True, help="Megatron checkpoint dir (endprompt_model.json or a "
                   "training save dir with `latest`) or an HF model dir (config.json)")  # fmt: skip
    p.add_argument("--tokenizer", "--tokenizer-model", dest="tokenizer", default=None,
                   help="SentencePiece .model, tokenizer.json or a dir holding one; default: the HF dir itself, "
                   "or the hf_assets/ of a converted Megatron checkpoint")  # fmt: skip
    p.add_argument("--tokenizer-type", choices=["SentencePieceTokenizer", "HuggingFaceTokenizer"], default=None,
                   help="default: SentencePieceTokenizer for a .model file, else HuggingFaceTokenizer")  # fmt: skip
    p.add_argument("--tasks", type=_csv(str), default=["passkey"],
                   help="comma list: passkey, niah_single_1..3, niah_multikey_1..3, niah_multivalue, "
                   "niah_multiquery, vt, cwe, fwe, perplexity")  # fmt: skip
    p.add_argument(
        "--lengths", type=_csv(int), required=True, help="prompt lengths in tokens, e.g. 1024,2048"
    )
    p.add_argument("--depths", type=_csv(float), default=list(DEFAULT_DEPTHS),
                   help="needle depths as fractions of the haystack (0 = start, 1 = end)")  # fmt: skip
    p.add_argument("--samples", type=int, default=4, help="prompts per (task, length, depth) cell")
    p.add_argument("--seed", type=int, default=0, help="base seed: same seed, same prompts")
    p.add_argument(
        "--task-option",
        dest="task_options",
        type=parse_task_option,
        action="append",
        default=[],
        metavar="TASK.KEY=INT",
        help="task option, repeatable: passkey.key_max=999 (keys 1..999), "
        "niah_single_1.number_digits=3 (default: the standard 1..50000 keys and 7-digit numbers)",
    )
    p.add_argument("--answer-nll", action="store_true",
                   help="also record the teacher-forced NLL of the right answer per prompt (a graded retrieval "
                   "signal; one extra forward pass per prompt)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=None, help="override every task's generation budget")
    p.add_argument("--ppl-data", default=None, help="held-out text for `perplexity`: .txt, .jsonl (field "
                   "'text'), a folder of them, or a dataset prefix built with the contiguous scheme")  # fmt: skip
    p.add_argument("--ppl-windows", type=int, default=None, help="windows per length (default: --samples)")
    p.add_argument("--out", required=True, help="output dir: results.json, results.md, *.png")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (Megatron checkpoints, torchrun)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size (not supported at evaluation)")
    p.add_argument("--cp", type=int, default=1, help="context parallel size (Megatron checkpoints, torchrun)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def resolve_tokenizer(
    checkpoint: str | Path, tokenizer: str | None, tokenizer_type: str | None
) -> tuple[str, str]:
    """(tokenizer_type, tokenizer_model) from the flags, or found next to the checkpoint; clear error if none."""
    if tokenizer is None:
        ckpt = Path(checkpoint)
        for folder in (ckpt, ckpt / "hf_assets"):
            for name in ("tokenizer.json", "tokenizer.model"):
                if (folder / name).is_file():
                    tokenizer = str(folder / name)
                    break
            if tokenizer:
                break
        if tokenizer is None:
            raise ValueError(
                f"--tokenizer: none given and no tokenizer.json / tokenizer.model found in {ckpt} or "
                f"{ckpt / 'hf_assets'}; pass --tokenizer PATH"
            )
    path = Path(tokenizer)
    if not path.exists():
        raise FileNotFoundError(f"--tokenizer: {path} does not exist")
    if tokenizer_type is None:
        tokenizer_type = "SentencePieceTokenizer" if path.suffix == ".model" else "HuggingFaceTokenizer"
    return tokenizer_type, str(path)


def max_positions_of(checkpoint: str | Path) -> int:
    """The model's max_position_embeddings, read from its config file without loading weights."""
    from megatron_endprompt.eval.backends import checkpoint_kind

    if checkpoint_kind(checkpoint) == "hf":
        return int(json.loads((Path(checkpoint) / "config.json").read_text())["max_position_embeddings"])
    from megatron_endprompt.convert import megatron_io

    return megatron_io.read_model_json(megatron_io.resolve_checkpoint_dir(checkpoint)).max_position_embeddings


def check_launch_layout(args: argparse.Namespace) -> None:
    """Say plainly what the multi-rank path supports (see docs/evaluation.md)."""
    if args.pp != 1:
        raise ValueError("--pp: pipeline parallelism is not supported at evaluation; load with --pp 1 (the "
                         "checkpoint reshards on load) and use --tp/--cp to fit long prompts")  # fmt: skip
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.tp * args.cp != 1 and world != args.tp * args.cp:
        raise ValueError(
            f"--tp {args.tp} --cp {args.cp}: launch with torchrun --nproc-per-node {args.tp * args.cp} "
            f"(WORLD_SIZE is {world})"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_upstream_warnings()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    from megatron_endprompt.data.tokenizers import load_tokenizer
    from megatron_endprompt.eval import plots, report
    from megatron_endprompt.eval.backends import load_backend
    from megatron_endprompt.eval.runner import evaluate, validate_request
    from megatron_endprompt.eval.tasks import validate_task_options

    check_launch_layout(args)
    tok_type, tok_model = resolve_tokenizer(args.checkpoint, args.tokenizer, args.tokenizer_type)
    validate_request(args.tasks, args.lengths, args.depths, args.samples, max_positions_of(args.checkpoint),
                     args.max_new_tokens, args.ppl_data)  # fmt: skip
    options = validate_task_options(task_options(args.task_options))
    tokenizer = load_tokenizer(tok_type, tok_model)
    backend = load_backend(
        args.checkpoint, device=args.device, dtype=getattr(torch, args.dtype), tp=args.tp, cp=args.cp
    )
    config = {"checkpoint": str(args.checkpoint), "tokenizer_type": tok_type, "tokenizer_model": tok_model,
              "dtype": args.dtype, "tp": args.tp, "pp": args.pp, "cp": args.cp}  # fmt: skip
    is_main = int(os.environ.get("RANK", "0")) == 0
    results = evaluate(
        backend, tokenizer, args.tasks, args.lengths, args.depths, args.samples, args.seed,
        max_new_tokens=args.max_new_tokens, ppl_data=args.ppl_data, ppl_windows=args.ppl_windows,
        progress=is_main and not args.no_progress, extra_config=config, task_options=options,
        answer_nll=args.answer_nll,
    )  # fmt: skip
    if not is_main:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    markdown = report.markdown_report(results)
    (out / "results.md").write_text(markdown + "\n")
    written = plots.write_plots(results, out, label=Path(args.checkpoint).name)
    print(markdown)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'} and {len(written)} plots")
    return 0
