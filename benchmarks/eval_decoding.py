#!/usr/bin/env python3
"""Evaluation time of a Megatron checkpoint with and without the decoding shortcuts and the KV cache, and of the
same model as an HF directory; same outputs.

`eval.evaluate` on one checkpoint once per mode, with `--answer-nll` (the toy reproduction's setting):
  plain      no KV cache: generation recomputes the prefix once per new token and ignores the reference answer;
             scoring the answer is its own forward (what evaluation did before the shortcuts);
  draft      no KV cache; generation verifies the reference answer as a draft (one forward per prompt answered
             right);
  draft+kept no KV cache; the draft, and the backend keeps the latest forward so generation's first step reuses
             the answer-scoring forward;
  kv cache   the Megatron backend's default: draft + kept, then one token per step through the KV cache;
  hf         `--hf-checkpoint` (the same model exported to HF) through `HFBackend` (transformers' generate).
Every Megatron mode must give the same generated tokens and answer NLLs (checked; the script fails otherwise);
hf must give the same tokens and answer NLLs within 1e-3. How much the draft saves depends on how often the
model is right, so measure a trained checkpoint for that; the cache and hf rows compare per-prompt cost.

  python benchmarks/eval_decoding.py --checkpoint RUN/runs/endprompt_pose_s0/iter_0000400 \
      --tokenizer RUN/tokenizer/toy.model --length 2032 --task-option passkey.key_max=999 \
      --task-option niah_single_1.number_digits=3

Results go to benchmarks/results/<--name>.{json,md} (or --out).
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
from megatron_endprompt.eval.backends import HFBackend, MegatronBackend  # noqa: E402
from megatron_endprompt.eval.cli import parse_task_option, task_options  # noqa: E402
from megatron_endprompt.eval.runner import evaluate  # noqa: E402
from megatron_endprompt.machine import cpu_name  # noqa: E402

MODES = ("plain", "draft", "draft+kept", "kv cache", "hf")
HF_NLL_TOLERANCE = 1e-3


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


def run_mode(backend, counter: list[int] | None, mode: str, tok, request: dict) -> dict:
    """Time one evaluation; `counter` counts decoder forwards (None: not counted, the HF backend)."""
    if mode in ("plain", "draft", "draft+kept"):
        backend = ModeBackend(backend, draft=mode != "plain", keep=mode == "draft+kept")
        backend.inner._last = None
    if counter is not None:
        counter[0] = 0
    start = time.perf_counter()
    result = evaluate(backend, tok, progress=False, answer_nll=True, **request)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "seconds_per_prompt": round(seconds / len(result["samples"]), 3),
        "forwards": counter[0] if counter is not None else None,
        "results": result["results"],
        "outputs": [(s["generated_ids"], s["answer_nll"]) for s in result["samples"]],
    }


def check_outputs(modes: dict) -> dict | None:
    """Every Megatron mode equals the first (tokens, NLLs to 5 decimals); hf's answer NLLs are within
    HF_NLL_TOLERANCE of Megatron's. Returns hf's agreement (None without hf): its tokens may differ where a
    random model's two best logits tie to float precision, so they are counted, not required."""
    megatron = [m for m in modes if m != "hf"]
    reference = modes[megatron[0]]["outputs"]
    rounded = [(ids, round(nll, 5)) for ids, nll in reference]
    for mode in megatron:
        if [(ids, round(nll, 5)) for ids, nll in modes[mode]["outputs"]] != rounded:
            raise SystemExit(f"mode {mode!r} changed a generation or an answer NLL: a shortcut is broken")
    if "hf" not in modes:
        return None
    hf = modes["hf"]["outputs"]
    diff = max((abs(a - b) for (_, a), (_, b) in zip(hf, reference, strict=True)), default=0.0)
    if diff > HF_NLL_TOLERANCE:
        raise SystemExit(
            f"hf answer NLLs differ from Megatron's by {diff:.2e} > {HF_NLL_TOLERANCE}: not the same model"
        )
    same = sum(a == b for (a, _), (b, _) in zip(hf, reference, strict=True))
    return {"nll_max_diff": diff, "same_generations": same, "prompts": len(hf)}


def _hf_line(agreement: dict | None) -> str:
    if agreement is None:
        return "."
    return (
        f"; hf: answer NLLs within {agreement['nll_max_diff']:.1e} of Megatron's, the same generated tokens in "
        f"{agreement['same_generations']} of {agreement['prompts']} prompts."
    )


def markdown(data: dict) -> str:
    rows = data["modes"]
    base = rows["hf"]["seconds"] if "hf" in rows else None
    lines = [
        "# Evaluation decoding: time of the same evaluation per decoding mode",
        "",
        f"Command: `{data['command']}` ({data['date']}). Machine: {data['machine']}.",
        "",
        *([data["note"], ""] if data["note"] else []),
        f"Request: {json.dumps(data['request'])}; `answer_nll` on. Every Megatron mode gave the same generated "
        "tokens and answer NLLs (checked by the script)" + _hf_line(data["hf_agreement"]),
        "",
        "| mode | seconds | per prompt (s) | decoder forwards | time / hf | scores |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for mode in (m for m in MODES if m in rows):
        r = rows[mode]
        ratio = f"{r['seconds'] / base:.2f}x" if base else "-"
        forwards = "-" if r["forwards"] is None else str(r["forwards"])
        lines.append(
            f"| {mode} | {r['seconds']:.1f} | {r['seconds_per_prompt']:.2f} | {forwards} | {ratio} | "
            f"{json.dumps(r['results'])} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a Megatron checkpoint (ours)")
    p.add_argument("--hf-checkpoint", type=Path, help="the same model as an HF directory: adds the hf mode")
    p.add_argument("--modes", nargs="+", choices=MODES[:-1], default=list(MODES[:-1]), help="Megatron modes")
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
    p.add_argument("--repeats", type=int, default=1, help="runs per mode; the fastest is reported")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="eval_decoding", help="result file names: <out>/<name>.{json,md}")
    p.add_argument("--note", default="", help="a line for the report (e.g. how the checkpoint was made)")
    args = p.parse_args(argv)
    for flag, path in (("--checkpoint", args.checkpoint), ("--hf-checkpoint", args.hf_checkpoint)):
        if path is not None and not path.exists():
            raise SystemExit(f"{flag}: {path} does not exist")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.tokenizer_type, args.tokenizer)
    recompute = MegatronBackend.from_checkpoint(args.checkpoint, device="cpu", kv_cache=False)
    backends = {mode: recompute for mode in args.modes}
    if "kv cache" in backends:
        backends["kv cache"] = MegatronBackend(recompute.model, name=recompute.name)  # same weights, cached
    if args.hf_checkpoint is not None:
        backends["hf"] = HFBackend(args.hf_checkpoint, device="cpu")
    counter = count_forwards(recompute)
    request = {
        "tasks": args.tasks,
        "lengths": [args.length],
        "depths": args.depths,
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "task_options": task_options(args.task_option),
    }
    modes = {}
    for mode, backend in backends.items():
        runs = [
            run_mode(backend, None if mode == "hf" else counter, mode, tok, request)
            for _ in range(args.repeats)
        ]
        modes[mode] = min(runs, key=lambda r: r["seconds"])
    hf_agreement = check_outputs(modes)
    for row in modes.values():
        row.pop("outputs")
    data = {
        "command": shlex.join(["python", "benchmarks/eval_decoding.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores visible, torch threads {args.threads}, "
        f"Python {platform.python_version()}, torch {torch.__version__}",
        "note": args.note,
        "request": request,
        "hf_agreement": hf_agreement,
        "modes": modes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
