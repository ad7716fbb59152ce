"""Training throughput: our megatron-core model vs a plain-PyTorch reference, EndPrompt vs full length.

One optimizer step = forward + backward + fused AdamW over one batch, in bf16, on one GPU. Each case reports
step time, tokens/s, peak memory and MFU. Cases (default set, Llama-3-8B layer shapes, `--layers` of them,
sized for one 80 GB H100; docs/performance.md has the arithmetic):

- `ep8k_b1`: EndPrompt samples, P = 8192 physical tokens, positions up to T = 65536, batch 1;
- `full64k_b1_ce`: contiguous 65536-token samples (full-length fine-tuning), batch 1; `ep8k_b8_ce`: batch 8.
  Every case of 64K tokens per step uses chunked CE: the full logits + CE of a 128K vocabulary need ~50 GB;
- `contig8k_b1` vs `upstream8k_b1`: our per-token RoPE on contiguous positions vs megatron's own RoPE;
- `ref_*`: the same shapes with `benchmarks/reference_llama.py` (its own chunked CE in the `_ce` cases);
- `*_cudnn` / `*_flash`: the SDPA backend forced to cuDNN or flash attention (default lets PyTorch choose);
- `*_ce`: chunked output layer + cross entropy (`--model.ce_chunk_size`, `--ce-chunk` tokens a chunk);
- `*_rope_triton` / `*_rope_compile`: fused per-token RoPE (`--model.rope_fusion`) vs the unfused default;
- `*_fast`: cuDNN attention + Triton RoPE + chunked CE together (our fastest configuration, if it works);
- `*_te`: the same case under Transformer Engine layers (run where TE is importable on CUDA, `--specs`). Every
  other case of ours forces the local spec (the SDPA knobs only reach our attention); the `spec` column says.

Any failure of a case (out of memory, an exception of any type) is recorded as that case's status and the
remaining cases run; `--budget-s` records the cases it had no time for as skipped.

Each case also reports `act_gib`: memory held after the forward pass minus memory before it (the activations
saved for backward, incl. the logits), measured on the last timed step. The "Targets" table compares cases
against the issue's targets (per-token RoPE overhead, ours vs reference at 8K, MFU at 64K, activation ratio).

MFU = tokens/s * F / peak, with F = 6 N + 6 L d_attn s FLOPs per token (`megatron_endprompt.training.flops`:
N = every matmul weight incl. the LM head, excluding the embedding lookup; s = PHYSICAL length, so EndPrompt
at P = 8K pays the 8K attention term although its positions reach 64K). Peak = the device's dense bf16 peak.

Usage: ``python benchmarks/train_throughput.py --out DIR`` on a CUDA machine (results.json + results.md);
``--smoke`` runs tiny versions of every case on CPU in seconds (a unit test does, so this file cannot rot).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.reference_llama import ReferenceLlama  # noqa: E402
from megatron_endprompt import positions  # noqa: E402
from megatron_endprompt.model.attention import sdpa_backend_context  # noqa: E402
from megatron_endprompt.model.config import ModelConfig, get_preset  # noqa: E402
from megatron_endprompt.training import flops  # noqa: E402

logger = logging.getLogger("train_throughput")

IMPLS = ("ours", "engine", "upstream", "reference")
BACKENDS = ("default", "cudnn", "flash", "efficient", "math")


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    name: str
    impl: str
    """`ours` (EndPromptGPTModel + torch fused AdamW), `engine` (our training Engine: megatron DDP, megatron
    optimizer with fp32 master weights, weighted loss), `upstream` (megatron GPTModel, its own contiguous
    RoPE), `reference` (benchmarks/reference_llama.py)."""
    seq_length: int
    """Physical tokens per sample."""
    batch: int
    """Samples per step."""
    scheme: str = "contiguous"
    """`contiguous` or `endprompt` (text at [0, P-b), cue at [T-b, T))."""
    target_length: int = 0
    """T for endprompt positions."""
    backend: str = "default"
    """SDPA backend forced for the step (`default` lets PyTorch choose)."""
    ce_chunk: int = 0
    """Chunked cross entropy: tokens per chunk (0 = megatron's vocab-parallel CE on full logits). Ours only."""
    rope_fusion: str = "auto"
    """`--model.rope_fusion` for our model (`auto` = unfused)."""
    spec: str = "local"
    """Layer spec of our / megatron's model, always forced: `local` (megatron's local layers with our SDPA
    attention, where `backend` applies) or `te` (Transformer Engine layers, `backend` has no effect). `-` for
    the reference, which has its own layers."""
    notes: str = ""
    """Why the case is shaped as it is (e.g. chunked CE because the unchunked path cannot fit)."""


@dataclass
class Result:
    """What one case measured (status `ok`, `oom`, `skipped` or `error: ...`)."""

    case: Case
    status: str = "ok"
    step_ms: float | None = None
    tokens_per_s: float | None = None
    peak_gib: float | None = None
    tflops_per_s: float | None = None
    mfu: float | None = None
    loss: float | None = None
    extra: dict = field(default_factory=dict)


SPECS = ("local", "te")
CE_NOTE = "chunked CE: unchunked logits + CE of 64K tokens x 128K vocab need ~50 GB (no fit on 80 GB)"


def default_cases(p: int, t: int, specs: tuple[str, ...] = ("local",), ce_chunk: int = 2048) -> list[Case]:
    """The case list of the module docstring for physical length p, target t and the layer specs to run.

    Sized for one 80 GB H100 (so also a 141 GB H200) with Llama-3-8B layers x 4: every case of 64K tokens per
    step (P = 64K, or 8 x 8K) uses chunked CE, named `_ce` / `_fast`, since its full logits do not fit.
    Ordered by importance for a time-limited GPU run (results are written after every case, `--budget-s`
    skips the rest): the cases behind the "Targets" table first (local spec, then TE), then the knob-by-knob
    comparisons (local spec: the SDPA backends are only ours), then batch 8 and the torch.compile variant.
    """
    ep = {"scheme": "endprompt", "target_length": t}
    ce = {"ce_chunk": ce_chunk, "notes": CE_NOTE}
    fast = {"backend": "cudnn", "ce_chunk": ce_chunk, "rope_fusion": "triton"}
    cases = [
        Case("ep8k_b1", "ours", p, 1, **ep),
        Case("contig8k_b1", "ours", p, 1),
        Case("upstream8k_b1", "upstream", p, 1),
        Case("ref_ep8k_b1", "reference", p, 1, spec="-", **ep),
        Case("ep8k_b1_ce", "ours", p, 1, ce_chunk=ce_chunk, **ep),
        Case("full64k_b1_ce", "ours", t, 1, **ce),
        Case("ref_full64k_b1_ce", "reference", t, 1, spec="-", **ce),
    ]
    if "te" in specs:
        te = ("ep8k_b1", "contig8k_b1", "upstream8k_b1", "ep8k_b1_ce", "full64k_b1_ce")
        cases += [_te(c) for c in cases if c.name in te]
    cases += [
        Case("ep8k_b1_fast", "ours", p, 1, **fast, **ep),
        Case("full64k_b1_fast", "ours", t, 1, **fast, notes=CE_NOTE),
        Case("contig8k_b1_rope_triton", "ours", p, 1, rope_fusion="triton"),
        Case("ep8k_b1_rope_triton", "ours", p, 1, rope_fusion="triton", **ep),
    ]
    for backend in ("cudnn", "flash"):
        cases += [
            Case(f"ep8k_b1_{backend}", "ours", p, 1, backend=backend, **ep),
            Case(f"full64k_b1_ce_{backend}", "ours", t, 1, backend=backend, **ce),
        ]
    cases.append(Case("engine_ep8k_b1", "engine", p, 1, **ep))
    if "te" in specs:
        cases.append(_te(cases[-1]))
    b8 = [
        Case("ep8k_b8_ce", "ours", p, 8, **ce, **ep),
        Case("ref_ep8k_b8_ce", "reference", p, 8, spec="-", **ce, **ep),
        Case("ep8k_b8_fast", "ours", p, 8, **fast, **ep, notes=CE_NOTE),
    ]
    cases += b8 + ([_te(b8[0])] if "te" in specs else [])
    cases.append(Case("ep8k_b1_rope_compile", "ours", p, 1, rope_fusion="compile", **ep))
    if "local" not in specs:
        cases = [c for c in cases if c.spec != "local"]
    return cases


def _te(case: Case) -> Case:
    return dataclasses.replace(case, name=case.name + "_te", spec="te")


def batch_for(case: Case, vocab: int, device: torch.device, cue: int = 8) -> dict[str, torch.Tensor]:
    """Random tokens, next-token labels and the case's position ids, all [batch, seq]."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (case.batch, case.seq_length + 1), generator=g)
    if case.scheme == "endprompt":
        segs = positions.endprompt(case.seq_length, case.target_length, cue)
    else:
        segs = positions.contiguous(case.seq_length)
    pos = torch.from_numpy(positions.position_ids(segs)).expand(case.batch, -1)
    return {
        "tokens": tokens[:, :-1].to(device),
        "labels": tokens[:, 1:].to(device),
        "position_ids": pos.contiguous().to(device),
    }


def build(
    impl: str,
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    use_te: bool | None,
    case: Case | None = None,
):
    """The model and a `loss_fn(model, batch) -> scalar` for one implementation (knobs from `case`, ours only)."""
    if impl == "reference":
        with torch.device(device):  # initialise on the GPU: building 2B parameters on the CPU takes minutes
            model = ReferenceLlama(cfg).to(dtype=dtype)

        def ref_loss(m, b):
            if case is not None and case.ce_chunk:
                return m.chunked_loss(b["tokens"], b["position_ids"], b["labels"], case.ce_chunk)
            logits = m(b["tokens"], b["position_ids"])
            return F.cross_entropy(logits.flatten(0, 1).float(), b["labels"].flatten())

        return model, ref_loss
    from megatron_endprompt.model.gpt import build_model

    if impl == "ours":
        model = build_model(cfg, params_dtype=dtype, use_te=use_te)
    elif impl == "upstream":
        model = _upstream_gpt(cfg, dtype, use_te)
    else:
        raise ValueError(f"--impl: unknown implementation {impl!r}; choose from {IMPLS}")
    # The local spec builds norms in fp32 and may leave them on the CPU: cast and move everything.
    model = model.to(device=device, dtype=dtype)
    if impl == "ours" and case is not None:
        from megatron_endprompt.model.gpt import set_performance_options

        set_performance_options(
            model.config,
            sdpa_backend="auto" if case.backend == "default" else case.backend,
            rope_fusion=case.rope_fusion,
            ce_chunk_size=case.ce_chunk,
        )

    def mcore_loss(m, b):
        return m(b["tokens"], b["position_ids"], None, labels=b["labels"]).float().mean()

    return model, mcore_loss


def _upstream_gpt(cfg: ModelConfig, dtype: torch.dtype, use_te: bool | None):
    """megatron-core's GPTModel with its own (contiguous, length-derived) RoPE; no rope scaling."""
    from megatron.core.models.gpt import GPTModel

    from megatron_endprompt.model.gpt import padded_vocab_size, to_transformer_config
    from megatron_endprompt.model.specs import layer_spec

    if cfg.rope_scaling.type != "none":
        raise ValueError("upstream comparison runs without rope scaling (megatron's RoPE knobs differ)")
    config = to_transformer_config(cfg, params_dtype=dtype, bf16=dtype == torch.bfloat16)
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(use_te=use_te),
        vocab_size=padded_vocab_size(cfg.vocab_size),
        max_sequence_length=cfg.max_position_embeddings,
        position_embedding_type="rope",
        rotary_base=int(cfg.rope_theta),
        share_embeddings_and_output_weights=cfg.tie_word_embeddings,
    )


def sdpa_backend(name: str, device: torch.device):
    """Context forcing one SDPA backend (`default`: PyTorch's own choice), through the model's own selector."""
    if name not in BACKENDS:
        raise ValueError(f"--backend: unknown SDPA backend {name!r}; choose from {BACKENDS}")
    return sdpa_backend_context("auto" if name == "default" else name, device)


def _allocated(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_engine(case: Case, cfg: ModelConfig, dtype: str):
    """Our training Engine for one case (the path `python -m megatron_endprompt.train` takes)."""
    from megatron_endprompt.training.config import from_dict
    from megatron_endprompt.training.engine import Engine

    train = from_dict(
        {
            # every ModelConfig field overrides the preset; the layer spec is the case's, never auto
            "model": {"preset": "tiny", **cfg.to_dict(), "use_te": case.spec == "te"},
            "precision": {"dtype": dtype},
            "optimizer": {"lr": 1e-5, "warmup_steps": 0},
            "data": {
                "seq_length": case.seq_length,
                "micro_batch_size": case.batch,
                "global_batch_size": case.batch,
                "mock": True,
            },
            "training": {"train_steps": 1000},
        }
    )
    train.validate(1, check_environment=False)
    return Engine(train, cfg)


def _time_engine(case: Case, cfg: ModelConfig, args, device) -> tuple[list[float], float]:
    engine = build_engine(case, cfg, args.dtype)
    batch = batch_for(case, cfg.vocab_size, device)
    batch["loss_weights"] = torch.ones_like(batch["tokens"], dtype=torch.float32)
    times, loss = [], math.nan
    for step in range(args.warmup + args.steps):
        _sync(device)
        start = time.perf_counter()
        with sdpa_backend(case.backend, device):
            loss = engine.train_step([batch]).loss
        _sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return times, float(loss)


def run_case(case: Case, cfg: ModelConfig, args: argparse.Namespace, device: torch.device) -> Result:
    """Build, warm up, time `args.steps` optimizer steps; out-of-memory is a result, not a crash."""
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = opt = batch = None
    try:
        if case.impl == "engine":
            times, loss = _time_engine(case, cfg, args, device)
            return _summarise(case, cfg, args, device, times, loss)
        model, loss_fn = build(case.impl, cfg, dtype, device, case.spec == "te", case)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
        batch = batch_for(case, cfg.vocab_size, device)
        times, loss, act = [], None, None
        for step in range(args.warmup + args.steps):
            _sync(device)
            start = time.perf_counter()
            before = _allocated(device)
            with sdpa_backend(case.backend, device):
                loss = loss_fn(model, batch)
                if before is not None:
                    act = _allocated(device) - before  # what the forward pass keeps for backward
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
        result = _summarise(case, cfg, args, device, times, float(loss))
        result.extra["act_gib"] = round(act / 2**30, 3) if act is not None else None
        return result
    except torch.OutOfMemoryError:
        return Result(case, status="oom")
    except Exception as err:  # noqa: BLE001 - any failure (no kernel for a shape, a Triton CompilationError,
        # an unsupported TE config) belongs to this case only; the remaining cases still run
        logger.warning("%s failed: %s: %s", case.name, type(err).__name__, err)
        return Result(case, status=f"error: {error_summary(err)}")
    finally:
        del model, opt, batch
        gc.collect()


def error_summary(err: BaseException) -> str:
    """`Type: first line of the message` (200 characters at most) for the results table."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:200]


def _summarise(case, cfg, args, device, times: list[float], loss: float) -> Result:
    step_s = sorted(times)[len(times) // 2]  # median: robust to one slow step
    tokens = case.batch * case.seq_length
    tok_s = tokens / step_s
    f = flops.flops_per_token(cfg, case.seq_length)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if peak is None and device.type == "cuda":
        peak = flops.peak_flops(torch.cuda.get_device_name(device), args.dtype)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Result(
        case,
        step_ms=round(step_s * 1e3, 2),
        tokens_per_s=round(tok_s, 1),
        peak_gib=round(mem, 2) if mem is not None else None,
        tflops_per_s=round(tok_s * f / 1e12, 3),
        mfu=round(flops.mfu(tok_s, f, peak), 4) if peak else None,
        loss=round(loss, 4),
        extra={"flops_per_token": f},
    )


def smoke_cases() -> list[Case]:
    """Every case kind that runs on CPU at toy sizes (seconds): no forced GPU backend, no fused RoPE."""
    return [
        dataclasses.replace(
            c,
            seq_length=64 if c.seq_length == 8192 else 256,
            batch=min(c.batch, 2),
            target_length=256 if c.target_length else 0,
            ce_chunk=16 if c.ce_chunk else 0,
        )
        for c in default_cases(8192, 65536)
        if c.backend == "default" and c.rope_fusion == "auto"
    ]


def _by_name(results: list[Result]) -> dict[str, Result]:
    return {r.case.name: r for r in results if r.status == "ok"}


def _ratio_row(name: str, num: float | None, den: float | None, target: str, ok) -> dict:
    value = num / den if num is not None and den else None
    verdict = "n/a" if value is None else ("met" if ok(value) else "missed")
    return {
        "target": name,
        "value": None if value is None else round(value, 4),
        "goal": target,
        "verdict": verdict,
    }


def targets(results: list[Result]) -> list[dict]:
    """The issue's targets, computed from the measured cases (`n/a` when a case is missing or failed)."""
    r = _by_name(results)

    def get(name: str, attr: str):
        res = r.get(name)
        if res is None:
            return None
        return res.extra.get(attr) if attr == "act_gib" else getattr(res, attr)

    def best(prefix: str, attr: str) -> tuple[str | None, float | None]:
        pairs = [(n, get(n, attr)) for n in r if n == prefix or n.startswith(prefix + "_")]
        pairs = [(n, v) for n, v in pairs if v is not None]
        return max(pairs, key=lambda nv: nv[1]) if pairs else (None, None)

    rows = [
        _ratio_row("per-token RoPE step time / megatron contiguous RoPE (contig8k_b1 / upstream8k_b1)",
                   get("contig8k_b1", "step_ms"), get("upstream8k_b1", "step_ms"), "<= 1.02", lambda v: v <= 1.02),
        _ratio_row("the same under TE layers (contig8k_b1_te / upstream8k_b1_te)",
                   get("contig8k_b1_te", "step_ms"), get("upstream8k_b1_te", "step_ms"), "<= 1.02",
                   lambda v: v <= 1.02),
        _ratio_row("fused per-token RoPE / megatron contiguous RoPE (contig8k_b1_rope_triton / upstream8k_b1)",
                   get("contig8k_b1_rope_triton", "step_ms"), get("upstream8k_b1", "step_ms"), "<= 1.02",
                   lambda v: v <= 1.02),
        _ratio_row("EndPrompt positions / contiguous positions (ep8k_b1 / contig8k_b1 step time)",
                   get("ep8k_b1", "step_ms"), get("contig8k_b1", "step_ms"), "<= 1.02", lambda v: v <= 1.02),
        _ratio_row("ours (default) / reference tokens/s at 8K (ep8k_b1 / ref_ep8k_b1)",
                   get("ep8k_b1", "tokens_per_s"), get("ref_ep8k_b1", "tokens_per_s"), ">= 1.05",
                   lambda v: v >= 1.05),
    ]  # fmt: skip
    name, tok = best("ep8k_b1", "tokens_per_s")
    rows.append(_ratio_row(f"ours (best: {name}) / reference tokens/s at 8K", tok,
                           get("ref_ep8k_b1", "tokens_per_s"), ">= 1.05", lambda v: v >= 1.05))  # fmt: skip
    name64, mfu64 = best("full64k_b1", "mfu")
    name8, mfu8 = best("ep8k_b1", "mfu")
    rows.append(_ratio_row(f"MFU at 64K / MFU at 8K (best: {name64} / {name8})", mfu64, mfu8, ">= 1.0",
                           lambda v: v >= 1.0))  # fmt: skip
    for suffix in ("_ce", "_fast", "_ce_te"):  # 64K fits only with chunked CE: compare like with like
        rows.append(_ratio_row(f"activation memory 8K / 64K (ep8k_b1{suffix} / full64k_b1{suffix})",
                               get(f"ep8k_b1{suffix}", "act_gib"), get(f"full64k_b1{suffix}", "act_gib"),
                               "<= 0.15", lambda v: v <= 0.15))  # fmt: skip
    return rows


def to_markdown(results: list[Result], meta: dict) -> str:
    """A results table with the formula and the environment."""
    lines = [
        "# Training throughput (one device, forward + backward + AdamW)",
        "",
        f"Model: {meta['model']} x {meta['layers']} layers, {meta['dtype']}; device: {meta['device']}; "
        f"torch {meta['torch']}; steps timed: {meta['steps']} (median) after {meta['warmup']} warm-up.",
        "MFU = tokens/s x (6N + 6 L d_attn s) / peak; N = matmul weights incl. LM head, excl. embedding; "
        "s = physical length.",
        "",
        "| case | impl | spec | P (physical) | batch | positions | SDPA | CE chunk | RoPE | status | step ms "
        "| tokens/s | TFLOP/s | MFU | peak GiB | act GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.case
        pos = f"endprompt T={c.target_length}" if c.scheme == "endprompt" else "contiguous"
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "n/a"
        cells = [
            c.name,
            c.impl,
            c.spec,
            c.seq_length,
            c.batch,
            pos,
            c.backend,
            c.ce_chunk or "off",
            c.rope_fusion,
            r.status,
            r.step_ms,
            r.tokens_per_s,
            r.tflops_per_s,
            mfu,
            r.peak_gib,
            r.extra.get("act_gib"),
        ]
        lines.append("| " + " | ".join("" if v is None else str(v) for v in cells) + " |")
    notes = sorted({c.notes for c in (r.case for r in results) if c.notes})
    lines += [""] + [
        f"Note ({', '.join(r.case.name for r in results if r.case.notes == n)}): {n}." for n in notes
    ]
    lines.append(
        "spec: layer spec, forced per case (local = megatron local layers + our SDPA attention, where the SDPA "
        "column applies; te = Transformer Engine layers; - = the reference's own layers)."
    )
    note = " CPU smoke run: the timings are noise and the verdicts mean nothing." if meta.get("smoke") else ""
    lines += ["", "## Targets (computed from the cases above)", "", "Not a verdict on anything unmeasured." + note, "", "| target | value | goal | verdict |",
              "|---|---|---|---|"]  # fmt: skip
    for row in targets(results):
        value = "" if row["value"] is None else row["value"]
        lines.append(f"| {row['target']} | {value} | {row['goal']} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for results.json and results.md")
    p.add_argument("--smoke", action="store_true", help="tiny model, tiny shapes, CPU allowed (seconds)")
    p.add_argument("--model", default="llama3-8b", help="ModelConfig preset for the layer shapes")
    p.add_argument(
        "--layers",
        type=int,
        default=3,
        help="number of layers (3: the 64K cases fit one 80 GB H100, see docs)",
    )
    p.add_argument("--seq-length", type=int, default=8192, help="EndPrompt physical length P")
    p.add_argument(
        "--target-length", type=int, default=65536, help="target length T (also the full-length case)"
    )
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--ce-chunk", type=int, default=2048, help="tokens per chunk in the *_ce / *_fast cases")
    p.add_argument("--steps", type=int, default=5, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per case")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument(
        "--specs",
        default="auto",
        help="layer specs to run, comma-separated from local,te; auto = local, plus te where Transformer "
        "Engine is importable on CUDA (each case forces its spec and is labelled with it)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no case after this many seconds; the rest are recorded as skipped (for a hard time limit)",
    )
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="peak dense TFLOP/s (default: from device name)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        cfg, cases, args.steps, args.warmup, args.dtype = get_preset("tiny"), smoke_cases(), 1, 1, "fp32"
        cfg = cfg.replace(max_position_embeddings=256)
    else:
        if device.type != "cuda":
            print("no CUDA device: run with --smoke on CPU; the full benchmark needs a GPU", file=sys.stderr)
            raise SystemExit(2)
        cfg = get_preset(args.model).replace(
            num_layers=args.layers, max_position_embeddings=args.target_length
        )
        cases = default_cases(args.seq_length, args.target_length, resolve_specs(args.specs), args.ce_chunk)
    if args.cases:
        wanted = set(args.cases.split(","))
        unknown = wanted - {c.name for c in cases}
        if unknown:
            raise SystemExit(f"--cases: unknown {sorted(unknown)}; known: {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in wanted]
    from megatron_endprompt.parallel import initialize

    initialize(tp=1, pp=1, cp=1, seed=1234)
    meta = {**_meta(args, cfg, device), "specs": sorted({c.spec for c in cases} - {"-"})}
    results = run_cases(cases, cfg, args, device, meta)
    print(to_markdown(results, meta))
    return results


def resolve_specs(arg: str) -> tuple[str, ...]:
    """`--specs` -> the layer specs to run (`auto`: local, plus te where TE is importable on CUDA)."""
    from megatron_endprompt.model.te_choice import te_usable as te_available

    if arg == "auto":
        return ("local", "te") if te_available() else ("local",)
    specs = tuple(arg.split(","))
    unknown = set(specs) - set(SPECS)
    if unknown or not specs:
        raise SystemExit(f"--specs: unknown {sorted(unknown)}; choose from auto or a comma list of {SPECS}")
    return specs


def run_cases(
    cases: list[Case], cfg: ModelConfig, args: argparse.Namespace, device: torch.device, meta: dict
) -> list[Result]:
    """Every case in order, each isolated by `run_case`; results written after every case.

    With `args.budget_s`, no case starts after that many seconds: the rest are listed as skipped, so a run
    under a hard time limit still names every case it did not measure.
    """
    results, start = [], time.monotonic()
    for case in cases:
        if args.budget_s is not None and time.monotonic() - start > args.budget_s:
            result = Result(case, status=f"skipped: --budget-s {args.budget_s:g} spent")
        else:
            result = run_case(case, cfg, args, device)
        logger.info(
            "%-24s %-6s %s ms/step %s tok/s mfu=%s peak=%s GiB act=%s GiB",
            case.name,
            result.status,
            result.step_ms,
            result.tokens_per_s,
            result.mfu,
            result.peak_gib,
            result.extra.get("act_gib"),
        )
        results.append(result)
        write_results(args.out, results, meta)  # after every case: a timeout keeps what was measured
    return results


def write_results(out: Path, results: list[Result], meta: dict) -> None:
    """results.json (cases + targets) and results.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "results": [asdict(r) for r in results], "targets": targets(results)}
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    (out / "results.md").write_text(to_markdown(results, meta))


def _meta(args: argparse.Namespace, cfg: ModelConfig, device: torch.device) -> dict:
    return {
        "model": args.model if not args.smoke else "tiny",
        "layers": cfg.num_layers,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "steps": args.steps,
        "warmup": args.warmup,
        "model_config": cfg.to_dict(),
        "ce_chunk": args.ce_chunk,
        "smoke": bool(args.smoke),
        "transformer_engine": _te_version(),
    }


def _te_version() -> str | None:
    try:
        import transformer_engine

        return getattr(transformer_engine, "__version__", "present")
    except Exception:  # noqa: BLE001 - absent or broken: either way no TE cases can run
        return None


if __name__ == "__main__":
    main()
