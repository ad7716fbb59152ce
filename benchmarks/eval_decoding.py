#!/usr/bin/env python3
"""Evaluation time of a Megatron checkpoint with and without the two decoding shortcuts, same outputs.

`eval.evaluate` on one checkpoint three times, with `--answer-nll` (the toy reproduction's setting):
  plain      generation recomputes the prefix once per new token and ignores the reference answer; scoring the
             answer is its own forward (what evaluation did before the shortcuts);
  draft      generation verifies the reference answer as a draft (one forward per prompt answered right);
  draft+kept the draft, and the backend keeps the latest forward so the answer's score reuses generation's first
             forward (what `evaluate` does now).
Every mode must give the same generated tokens and answer NLLs (checked; the script fails otherwise): the
shortcuts change the number of forwards, never a result. How much they save depends on how often the model is
right, so measure a trained checkpoint (the toy reproduction's or the demo's), not a random one.

  python benchmarks/eval_decoding.py --checkpoint RUN/runs/endprompt_pose_s0/iter_0000400 \
      --tokenizer RUN/tokenizer/toy.model --length 2032 --task-option passkey.key_max=999 \
      --task-option niah_single_1.number_digits=3

Results go to benchmarks/results/eval_decoding.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_endprompt.data.tokenizers import load_tokenizer  # noqa: E402
from megatron_endprompt.eval.backends import MegatronBackend  # noqa: E402
from megatron_endprompt.eval.cli import parse_task_option, task_options  # noqa: E402
from megatron_endprompt.eval.runner import evaluate  # noqa: E402
from megatron_endprompt.machine import cpu_name  # noqa: E402

MODES = ("plain", "draft", "draft+kept")


class ModeBackend:
    """`MegatronBackend` with the shortcuts switched off: `draft=False` drops generation's draft, `keep=False`
    forgets the latest forward before every call (so nothing is reused)."""

    def __init__(self, inner: MegatronBackend, draft: bool, keep: bool):
        self.inner, self.draft, self.keep = inner, draft, keep

    def __getattr__(self, name: str):  # name, max_positions, vocab_size, logits
        return getattr(self.inner, name)

    def _forget(self) -> None:
        if not self.keep:
            self.inner._last = None

    def token_nll(self, input_ids):
        self._forget()
        return self.inner.token_nll(input_ids)

    def generate(self, input_ids, max_new_tokens, stop_ids=(), draft=()):
        self._forget()
        return self.inner.generate(input_ids, max_new_tokens, stop_ids, draft if self.draft else ())


def count_forwards(backend: MegatronBackend) -> list[int]:
    """A one-element counter of decoder forwards (every forward of the model runs its decoder once)."""
    counter = [0]
    gpt = backend._gpt()
    module = gpt.decoder if gpt is not None else backend.model

    def hook(*_args) -> None:
        counter[0] += 1

    module.register_forward_hook(hook)
    return counter


def run_mode(backend: MegatronBackend, counter: list[int], mode: str, tok, request: dict) -> dict:
    wrapped = ModeBackend(backend, draft=mode != "plain", keep=mode == "draft+kept")
    backend._last, counter[0] = None, 0
    start = time.perf_counter()
    result = evaluate(wrapped, tok, progress=False, answer_nll=True, **request)
    seconds = time.perf_counter() - start
    outputs = [(s["generated_ids"], round(s["answer_nll"], 5)) for s in result["samples"]]
    return {
        "seconds": round(seconds, 2),
        "forwards": counter[0],
        "results": result["results"],
        "outputs": outputs,
    }


def markdown(data: dict) -> str:
    rows = data["modes"]
    base = rows["plain"]["seconds"]
    lines = [
        "# Evaluation decoding: time of the same evaluation with and without the shortcuts",
        "",
        f"Command: `{data['command']}` ({data['date']}). Machine: {data['machine']}.",
        "",
        *([data["note"], ""] if data["note"] else []),
        f"Request: {json.dumps(data['request'])}; `answer_nll` on. Every mode gave the same generated tokens "
        "and answer NLLs (checked by the script).",
        "",
        "| mode | seconds | decoder forwards | speed-up vs plain | scores |",
        "|---|---:|---:|---:|---|",
    ]
    for mode in MODES:
        r = rows[mode]
        lines.append(
            f"| {mode} | {r['seconds']:.1f} | {r['forwards']} | {base / r['seconds']:.1f}x | "
            f"{json.dumps(r['results'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a Megatron checkpoint (ours)")
    p.add_argument("--tokenizer", required=True, help="tokenizer model / directory")
    p.add_argument("--tokenizer-type", default="SentencePieceTokenizer")
    p.add_argument("--tasks", nargs="+", default=["passkey", "niah_single_1"])
    p.add_argument("--length", type=int, default=2032, help="prompt length in tokens")
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--samples", type=int, default=4, help="prompts per task and depth")
    p.add_argument("--max-new-tokens", type=int, default=5)
    p.add_argument(
        "--task-option", type=parse_task_option, action="append", default=[], help="TASK.KEY=INT (repeatable)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--note", default="", help="a line for the report (e.g. how the checkpoint was made)")
    args = p.parse_args(argv)
    if not args.checkpoint.exists():
        raise SystemExit(f"--checkpoint: {args.checkpoint} does not exist")
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.tokenizer_type, args.tokenizer)
    backend = MegatronBackend.from_checkpoint(args.checkpoint, device="cpu")
    counter = count_forwards(backend)
    request = {
        "tasks": args.tasks,
        "lengths": [args.length],
        "depths": args.depths,
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "task_options": task_options(args.task_option),
    }
    modes = {mode: run_mode(backend, counter, mode, tok, request) for mode in MODES}
    reference = modes["plain"]["outputs"]
    for mode in MODES:
        if modes[mode].pop("outputs") != reference:
            raise SystemExit(f"mode {mode!r} changed a generation or an answer NLL: a shortcut is broken")
    data = {
        "command": shlex.join(["python", "benchmarks/eval_decoding.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores visible, torch threads {args.threads}, "
        f"Python {platform.python_version()}, torch {torch.__version__}",
        "note": args.note,
        "request": request,
        "modes": modes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_decoding.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "eval_decoding.md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
