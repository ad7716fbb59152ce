#!/usr/bin/env python3
"""Toy reproduction of the EndPrompt comparison: every context-extension variant from one short-context base.

1. A general corpus mixing ordinary text with retrieval tasks (`megatron_endprompt.demo_corpus`), a
   SentencePiece tokenizer trained on it.
2. A base model pretrained at context P0 (optionally with a length curriculum, e.g. 64 -> 128 -> P0), which
   must be strong inside its window (the script reports its passkey accuracy at P0).
3. Extension variants, each starting from the base weights with RoPE scaling T/P0 (PI; `scaling: yarn` for
   YaRN) and fine-tuned on the SAME
   general corpus (no long-context data) with an equal token budget: `pi_only` (no fine-tuning),
   `contiguous_short` (P0 samples, plain positions), `endprompt` (paper cues, cue loss weight),
   `endprompt_tail_fixed` / `endprompt_tail_random` (the released code's terminal tail), `pose`,
   `endprompt_pose`, and `full_length` (contiguous samples of T tokens; fewer samples per step, so that steps
   and tokens match the others).
4. Passkey and NIAH (RULER niah_single_1) up to T for every variant and extension seed; a results table and a
   plot with the exact command, the hardware, wall time and training FLOPs per variant.

Every stage calls the package (data builder, `python -m megatron_endprompt.train`, `eval.evaluate`).
Settings come from a YAML file (default: `config.yaml` next to this script) and `--set key=value` overrides.

    python examples/toy_reproduction/run.py --out runs/toy [--config FILE] [--set base_steps=300 ...]
    python examples/toy_reproduction/run.py --out runs/toy --report-only   # rebuild the report from results
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from megatron_endprompt import demo, demo_corpus  # noqa: E402
from megatron_endprompt.demo_corpus import CorpusConfig, write_corpus  # noqa: E402
from megatron_endprompt.model.config import small_llama_fields  # noqa: E402

logger = logging.getLogger("toy_reproduction")

PAPER_CUES = ("This is the end of text, please pay attention here", "@token:<|eot|>", "End.")
"""EP_1, EP_2 (the tokenizer's end-of-turn token; our SentencePiece models carry <|eot|>), EP_3."""

SCALING_NAMES = {"linear": "PI", "yarn": "YaRN"}

VARIANTS = (
    "pi_only",
    "contiguous_short",
    "endprompt",
    "endprompt_tail_fixed",
    "endprompt_tail_random",
    "pose",
    "endprompt_pose",
    "full_length",
)


@dataclass
class ToyConfig:
    """Every setting of the reproduction (YAML keys, `--set key=value`)."""

    documents: int = 30000
    """Corpus documents."""
    max_words: int = 150
    """Largest retrieval haystack in words (tasks fit in P0)."""
    retrieval_fraction: float = 0.8
    """Share of corpus documents that are retrieval tasks (passkey, magic numbers, recall lists)."""
    repeat_fraction: float = 0.1
    """Share of corpus documents that are copy practice (a random list said twice); see demo_corpus."""
    passkey_max: int = 999
    """Passkeys are drawn from 1..passkey_max in the corpus AND the eval (3 digits: a small model learns to copy
    them within a CPU budget; the standard 1..50000 is `--task-option passkey.key_max=50000` territory)."""
    value_digits: int = 3
    """Digits of the magic numbers in the corpus and the NIAH eval (RULER uses 7)."""
    packing: str = "aligned"
    """Builder --packing of every dataset. `aligned` starts each sample at a document start, so a retrieval
    document is never split between a sample holding its question and one holding its needle; with `concat`
    most long retrieval documents are split, and our 4 M model then learned no passkey copying in 1000 steps of
    passkey documents, where aligned samples gave 100% at 128 tokens after 1200 (examples/toy_reproduction/README.md)."""
    vocab_size: int = 2048
    """SentencePiece vocabulary (digits always split; at 2048 most words are one piece)."""
    hidden_size: int = 256
    """Model width (head dim 32: 8 heads). In our CPU trials width 128 never learned in-context copying within
    a session's budget; width 256 does (README)."""
    num_layers: int = 4
    """Transformer blocks."""
    base_length: int = 256
    """P0: base context and physical length of every short-sample variant."""
    factor: int = 8
    """T = factor * P0; the RoPE scaling factor."""
    scaling: str = "linear"
    """RoPE scaling of every extension variant (and of `pi_only`, which is then "scaling only"): `linear`
    (position interpolation, the paper's setting) or `yarn` (original window P0). At this scale PI 8 erased the
    base's passkey retrieval even inside P0, while YaRN kept it without any fine-tuning (README)."""
    warmup_steps: int = 1000
    """Base steps BEFORE the curriculum, on passkey documents alone (haystacks up to `warmup_max_words`) at the
    first curriculum length: where a small model first learns to copy from context. Without it our 4 M model
    retrieved 0% after 1500 general-corpus steps; with it, 100% at 128 tokens after 1000 warm-up steps, kept
    through general training (README). 0 disables it."""
    warmup_lr: float = 1e-3
    """Constant LR of the warm-up (after 100 linear warm-up steps). With a cosine schedule from 1.5e-3 the same
    1500 steps gave 20% instead of 100%: copying forms late, when a decaying LR is already small."""
    warmup_max_words: int = 60
    """Largest haystack of a warm-up document, in words (the documents fit the first curriculum length)."""
    base_curriculum: list[int] = field(default_factory=lambda: [128, 256])
    """Sequence lengths of successive base pretraining stages (the last must be P0; repeat a length to go on
    training at it with a fresh learning-rate cycle)."""
    base_steps: list[int] = field(default_factory=lambda: [500, 1500])
    """Optimizer steps of each curriculum stage."""
    focus_steps: int = 1000
    """Extra base steps at P0 after the curriculum, on a retrieval-focused corpus drawn by the same generator
    (only retrieval documents, passkeys `focus_passkey_weight` times as frequent): a base that retrieves inside
    its window. Extension variants never see this corpus."""
    focus_passkey_weight: float = 4.0
    """Passkey weight of the focused corpus (magic numbers and recall lists weigh 1)."""
    focus_min_words: int = 80
    """Smallest haystack of a focused document, in words. The eval's needle at depth 0 of a P0 prompt sits
    ~216 tokens before its question; general documents (haystacks 5..max_words, log-uniform) put a needle that
    far in under 1% of passkey documents, and our base then read depth-0 needles at 80% (README)."""
    focus_max_words: int = 170
    """Largest haystack of a focused document, in words (80..170 words: documents of ~130-290 tokens; the ~10%
    longer than P0 lose their question to `aligned` packing, the price of distances up to ~220 tokens)."""
    base_lr: float = 1e-3
    """Peak LR of base pretraining."""
    base_tokens_per_step: int = 1024
    """Tokens per base step (global batch = this / stage length). Small batches, many updates: copying from
    context forms after a number of updates more than a number of tokens."""
    extend_steps: int = 100
    """Optimizer steps of every extension variant (equal for all, so equal tokens)."""
    extend_tokens_per_step: int = 4096
    """Tokens per extension step (global batch = this / physical length: 16 at P0 = 256, 2 at T = 2048)."""
    extend_lr: float = 5e-4
    """Peak LR of the extension."""
    cue_loss_weight: float = 0.1
    """EndPrompt cue loss weight (paper eq. 11)."""
    terminal_length: int = 20
    """K of endprompt-tail (released recipe: 20)."""
    pose_chunks: int = 2
    """PoSE chunks."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Extension seeds (data order of the fine-tuning and eval prompts); the base model is trained once."""
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    """Variants to run."""
    eval_lengths: list[int] = field(default_factory=lambda: [256, 1024, 2032])
    """Prompt lengths (the largest + max_new_tokens must fit in T)."""
    eval_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """Needle depths."""
    eval_samples: int = 5
    """Prompts per (task, length, depth) and seed."""
    eval_tasks: list[str] = field(default_factory=lambda: ["passkey", "niah_single_1", "perplexity"])
    """Evaluation tasks (`perplexity`: held-out perplexity by window length, from another corpus seed)."""
    ppl_windows: int = 16
    """Held-out windows per length for perplexity."""
    max_new_tokens: int = 5
    """Greedy generation budget per prompt (a 3-digit answer takes 4 tokens: a space and 3 digits)."""

    @property
    def target_length(self) -> int:
        return self.base_length * self.factor

    def validate(self) -> None:
        """Errors name the key to fix."""
        if self.base_curriculum[-1] != self.base_length:
            raise ValueError("base_curriculum: the last stage must train at base_length (P0)")
        if len(self.base_steps) != len(self.base_curriculum):
            raise ValueError("base_steps: one entry per base_curriculum stage")
        if self.warmup_steps < 0 or self.warmup_max_words < 5 or self.warmup_lr <= 0:
            raise ValueError("warmup_steps must be >= 0, warmup_max_words >= 5 and warmup_lr > 0")
        if not 5 <= self.focus_min_words <= self.focus_max_words:
            raise ValueError(
                f"need 5 <= focus_min_words <= focus_max_words, got {self.focus_min_words}, {self.focus_max_words}"
            )
        if self.scaling not in ("linear", "yarn"):
            raise ValueError(f"scaling: linear or yarn, got {self.scaling!r}")
        if self.packing not in ("concat", "aligned"):  # `document` would skip every document shorter than P
            raise ValueError(f"packing: concat or aligned, got {self.packing!r}")
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"variants: unknown {unknown}; choose from {VARIANTS}")
        for length in (*self.base_curriculum, self.target_length):
            if self.base_tokens_per_step % length and length in self.base_curriculum:
                raise ValueError(f"base_tokens_per_step must be a multiple of every stage length ({length})")
            if self.extend_tokens_per_step % length and length in (self.base_length, self.target_length):
                raise ValueError(f"extend_tokens_per_step must be a multiple of P0 and T ({length})")
        if max(self.eval_lengths) + self.max_new_tokens > self.target_length:
            limit = self.target_length - self.max_new_tokens
            raise ValueError(f"eval_lengths: the largest must be <= T - max_new_tokens = {limit}")

    def model(self, **extra) -> dict:
        """ModelConfig fields (over the `tiny` preset) of every run."""
        return {
            **small_llama_fields(
                num_layers=self.num_layers,
                hidden_size=self.hidden_size,
                vocab_size=self.vocab_size,
                max_position_embeddings=self.target_length,
            ),
            **extra,
        }


def load_toy_config(path: Path | None, overrides: list[str]) -> ToyConfig:
    """YAML file, then `key=value` overrides (values parsed as YAML: `seeds=[0,1]`, `base_lr=1e-3`)."""
    raw = yaml.safe_load(path.read_text()) if path else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        raw[key.strip()] = yaml.safe_load(value)
    known = {f.name for f in dataclasses.fields(ToyConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"--set/--config: unknown keys {unknown}; known: {sorted(known)}")
    cfg = ToyConfig(**raw)
    cfg.validate()
    return cfg


# ------------------------------------------------------------------------------------------------ data


def schemes(cfg: ToyConfig) -> dict[str, tuple]:
    """Dataset name -> (SchemeConfig, cues) for the base curriculum and every variant's training data."""
    from megatron_endprompt.positions import SchemeConfig

    p0, t = cfg.base_length, cfg.target_length
    out = {f"base_{n}": (SchemeConfig("contiguous", n, n), []) for n in cfg.base_curriculum}
    if cfg.warmup_steps:
        first = cfg.base_curriculum[0]
        out["base_warmup"] = (SchemeConfig("contiguous", first, first), [])
    if cfg.focus_steps:
        out["base_focus"] = (SchemeConfig("contiguous", p0, p0), [])
    out.update(
        {
            "contiguous_short": (SchemeConfig("contiguous", p0, p0), []),
            "endprompt": (SchemeConfig("endprompt", p0, t), list(PAPER_CUES)),
            "endprompt_tail_fixed": (SchemeConfig("endprompt-tail", p0, t, cfg.terminal_length, "fixed"), []),
            "endprompt_tail_random": (
                SchemeConfig("endprompt-tail", p0, t, cfg.terminal_length, "random"),
                [],
            ),
            "pose": (SchemeConfig("pose", p0, t, pose_chunks=cfg.pose_chunks), []),
            "endprompt_pose": (
                SchemeConfig("endprompt-pose", p0, t, pose_chunks=cfg.pose_chunks),
                list(PAPER_CUES),
            ),
            "full_length": (SchemeConfig("contiguous", t, t), []),
        }
    )
    return out


def corpus_config(cfg: ToyConfig, documents: int, seed: int) -> CorpusConfig:
    return CorpusConfig(
        documents=documents,
        retrieval_fraction=cfg.retrieval_fraction,
        max_words=cfg.max_words,
        repeat_fraction=cfg.repeat_fraction,
        passkey_max=cfg.passkey_max,
        value_digits=cfg.value_digits,
        seed=seed,
    )


def write_passkey_corpus(path: Path, cfg: ToyConfig, documents: int, seed: int) -> Path:
    """Passkey documents only (the warm-up corpus), from the corpus generator's own passkey template."""
    corpus = dataclasses.replace(corpus_config(cfg, documents, seed), max_words=cfg.warmup_max_words)
    return demo_corpus.write_passkey_corpus(path, corpus)


DATA_KEYS = (
    "documents",
    "max_words",
    "retrieval_fraction",
    "repeat_fraction",
    "passkey_max",
    "value_digits",
    "packing",
    "vocab_size",
    "base_length",
    "factor",
    "warmup_max_words",
    "focus_passkey_weight",
    "focus_min_words",
    "focus_max_words",
    "terminal_length",
    "pose_chunks",
)
"""Settings the corpora, tokenizer and datasets are made from: fixed for the lifetime of an --out directory."""


def check_data_settings(out: Path, cfg: ToyConfig) -> None:
    """Refuse an --out whose data was made with other settings (training runs would silently read it)."""
    path = out / "data_settings.json"
    wanted = {key: getattr(cfg, key) for key in DATA_KEYS}
    if not path.is_file():
        write_json(path, wanted)
        return
    made = json.loads(path.read_text())
    changed = sorted(k for k in DATA_KEYS if k in made and made[k] != wanted[k])
    if changed:
        detail = ", ".join(f"{k}: {made[k]} there, {wanted[k]} now" for k in changed)
        raise ValueError(
            f"--out {out} holds data made with other settings ({detail}); use a fresh --out, or --set the "
            "values it was made with"
        )
    write_json(path, {**made, **wanted})  # records keys added since the data was made


def build_all(out: Path, cfg: ToyConfig) -> tuple[Path, dict[str, str]]:
    """Corpus, tokenizer and every dataset (skipped when already built with the same data settings)."""
    from megatron_endprompt.data.builder import BuildConfig, build
    from megatron_endprompt.data.tokenizers import train_sentencepiece

    check_data_settings(out, cfg)
    corpus = out / "corpus" / "train.jsonl"
    if not corpus.is_file():
        write_corpus(corpus, corpus_config(cfg, cfg.documents, seed=0))
    heldout = out / "corpus" / "heldout.jsonl"
    if not heldout.is_file():
        docs = max(200, cfg.documents // 20)
        write_corpus(heldout, corpus_config(cfg, docs, seed=1))
    focus = out / "corpus" / "focus.jsonl"
    if cfg.focus_steps and not focus.is_file():
        focused = dataclasses.replace(
            corpus_config(cfg, cfg.documents // 2, seed=2),
            retrieval_fraction=1.0,
            repeat_fraction=0.0,
            passkey_weight=cfg.focus_passkey_weight,
            min_words=cfg.focus_min_words,
            max_words=cfg.focus_max_words,
        )
        write_corpus(focus, focused)
    warmup = out / "corpus" / "warmup.jsonl"
    if cfg.warmup_steps and not warmup.is_file():
        write_passkey_corpus(warmup, cfg, cfg.documents // 2, seed=3)
    tok = out / "tokenizer" / "toy.model"
    if not tok.is_file():
        tok.parent.mkdir(parents=True, exist_ok=True)
        texts = (json.loads(line)["text"] for line in corpus.open(encoding="utf-8"))
        tok = Path(
            train_sentencepiece(
                texts, out / "tokenizer" / "toy", vocab_size=cfg.vocab_size, split_digits=True
            )
        )
    prefixes = {}
    for name, (scheme, cues) in schemes(cfg).items():
        prefix = out / "data" / name
        if not Path(f"{prefix}.idx").is_file():
            build(
                BuildConfig(
                    input=[str({"base_focus": focus, "base_warmup": warmup}.get(name, corpus))],
                    output_prefix=str(prefix),
                    tokenizer_type="SentencePieceTokenizer",
                    tokenizer_model=str(tok),
                    scheme=scheme,
                    cues=cues,
                    append_eod=True,
                    packing=cfg.packing,
                    seed=0,
                )
            )
        prefixes[name] = str(prefix)
    return tok, prefixes


# ------------------------------------------------------------------------------------------------ training


def write_json(path: Path, obj: dict) -> None:
    """Whole or not at all: a process killed mid-write leaves no truncated cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def done_file(ckpt: Path) -> Path:
    """The `<run>.done.json` next to a run directory, for a checkpoint inside it (or the run itself)."""
    ckpt = Path(ckpt)
    own = ckpt.with_suffix(".done.json")
    return own if own.is_file() else ckpt.parent.with_suffix(".done.json")


def lineage(ckpt: Path | str | None) -> str:
    """The fingerprint recorded for the run that wrote `ckpt` ("" when none was recorded)."""
    if not ckpt:
        return ""
    done = done_file(Path(ckpt))
    return json.loads(done.read_text()).get("fingerprint", "") if done.is_file() else ""


def fingerprint(out: Path, settings: dict, parent: str) -> str:
    """What a cached result depends on: its settings (paths relative to --out) and its parent's fingerprint,
    so that retraining the base invalidates every variant and evaluation made from it."""
    text = json.dumps(settings, sort_keys=True, default=str).replace(str(out), "<out>")
    return hashlib.sha256((text + parent).encode()).hexdigest()[:16]


def cached(done: Path, expected: str, what: str, legacy_ok: bool = True) -> dict | None:
    """The cached result in `done` when it was made with the same settings, else None. Older caches carry no
    fingerprint: training runs are reused with a warning (`legacy_ok`), evaluations are made again."""
    if not done.is_file():
        return None
    info = json.loads(done.read_text())
    recorded = info.get("fingerprint")
    if recorded is None and legacy_ok:
        logger.warning("%s: reusing %s, which records no settings fingerprint", what, done)
        return info
    if recorded != expected:
        logger.info("%s: settings changed since %s was made; computing it again", what, done)
        return None
    return info


def _train(
    out: Path, name: str, run: demo.RunSpec, model: dict, optimizer: dict | None = None
) -> tuple[Path, float]:
    """One training run through the CLI, reusing a finished one made with the same settings; returns
    (checkpoint, wall seconds). `optimizer` overrides keys of the recipe's optimizer section."""
    from megatron_endprompt.training.checkpoint_io import find_latest

    spec = demo.recipe(run, model)
    spec["optimizer"].update(optimizer or {})
    done = out / "runs" / f"{name}.done.json"
    key = fingerprint(out, spec, lineage(run.init_from))
    info = cached(done, key, f"training {name}")
    if info is not None:
        return Path(info["checkpoint"]), info["seconds"]
    done.unlink(missing_ok=True)  # a run killed from here on leaves no stale marker
    start = time.perf_counter()
    ckpt = demo.run_training(out, name, spec)
    seconds = round(time.perf_counter() - start, 1)
    info = {"checkpoint": str(find_latest(run.save) or ckpt), "seconds": seconds, "fingerprint": key}
    write_json(done, info)
    return ckpt, seconds


class BaseStage(NamedTuple):
    """One base pretraining run: its name, the dataset it reads, window length, steps, data-order seed and
    overrides of the recipe's optimizer section (None: the recipe's cosine schedule at `base_lr`)."""

    name: str
    dataset: str
    length: int
    steps: int
    seed: int
    optimizer: dict | None = None


def warmup_optimizer(cfg: ToyConfig) -> dict:
    """Constant LR for the warm-up: copying forms late in it, when a decaying LR would already be small."""
    return demo.constant_lr(cfg.warmup_lr, cfg.warmup_steps)


def base_stages(cfg: ToyConfig) -> list[BaseStage]:
    """The base pretraining runs in order (the warm-up, if any, first); a length repeated continues at that
    length with a new name and a new data order (`base_256`, then `base_256_1`, ...); the focus stage (if any)
    comes last."""
    stages, seen = [], {}
    if cfg.warmup_steps:
        first = cfg.base_curriculum[0]
        warmup = BaseStage("base_warmup", "base_warmup", first, cfg.warmup_steps, 0, warmup_optimizer(cfg))
        stages.append(warmup)
    for length, steps in zip(cfg.base_curriculum, cfg.base_steps, strict=True):
        k = seen[length] = seen.get(length, -1) + 1
        stages.append(
            BaseStage(f"base_{length}" + (f"_{k}" if k else ""), f"base_{length}", length, steps, k)
        )
    if cfg.focus_steps:
        stages.append(BaseStage("base_focus", "base_focus", cfg.base_length, cfg.focus_steps, 0))
    return stages


def train_base(out: Path, cfg: ToyConfig, data: dict[str, str]) -> tuple[Path, float]:
    """Curriculum stages at increasing length, each starting from the previous stage's weights."""
    init, total = None, 0.0
    for stage in base_stages(cfg):
        run = demo.RunSpec(
            data[stage.dataset],
            stage.length,
            cfg.base_tokens_per_step // stage.length,
            stage.steps,
            cfg.base_lr,
            str(out / "runs" / stage.name),
            seed=stage.seed,
            init_from=init,
        )
        ckpt, seconds = _train(out, stage.name, run, cfg.model(), stage.optimizer)
        init, total = str(ckpt), total + seconds
    return Path(init), total


def physical_length(cfg: ToyConfig, variant: str) -> int:
    return cfg.target_length if variant == "full_length" else cfg.base_length


def extend(
    out: Path, cfg: ToyConfig, data: dict[str, str], base: Path, variant: str, seed: int
) -> tuple[Path, float]:
    """Fine-tune `variant` from the base weights with RoPE scaling T/P0 (pi_only: no training, config only)."""
    name = f"{variant}_s{seed}"
    if variant == "pi_only":
        return scaled_copy(out, cfg, base), 0.0
    p = physical_length(cfg, variant)
    run = demo.RunSpec(
        data[variant],
        p,
        cfg.extend_tokens_per_step // p,
        cfg.extend_steps,
        cfg.extend_lr,
        str(out / "runs" / name),
        seed=seed,
        init_from=str(base),
        cue_loss_weight=cfg.cue_loss_weight,
    )
    return _train(out, name, run, cfg.model(rope_scaling=rope_scaling(cfg)))


def scaled_copy(out: Path, cfg: ToyConfig, base: Path) -> Path:
    """`pi_only`: the base weights with the extension's RoPE scaling, no fine-tuning (made once per base and
    scaling: processes splitting the variants over one --out may be evaluating it)."""
    done = out / "runs" / "pi_only.done.json"
    key = fingerprint(out, {"base": str(base), "rope_scaling": rope_scaling(cfg)}, lineage(base))
    if cached(done, key, "pi_only") is not None and (out / "runs" / "pi_only").is_dir():
        return out / "runs" / "pi_only"
    dc = dataclasses.replace(demo.FULL, base_length=cfg.base_length, factor=cfg.factor)
    copy = demo.pi_only(out, base, dc, rope_scaling(cfg))
    write_json(done, {"checkpoint": str(copy), "seconds": 0.0, "fingerprint": key})
    return copy


def rope_scaling(cfg: ToyConfig) -> dict:
    """ModelConfig.rope_scaling fields of every extended model."""
    scaling = {"type": cfg.scaling, "factor": float(cfg.factor)}
    if cfg.scaling == "yarn":
        scaling["original_max_position_embeddings"] = cfg.base_length
    return scaling


def base_flops(cfg: ToyConfig) -> float:
    """Model FLOPs of base pretraining (all curriculum stages)."""
    from megatron_endprompt.model.config import get_preset
    from megatron_endprompt.training import flops

    model = get_preset("tiny").replace(**cfg.model())
    return sum(
        stage.steps * cfg.base_tokens_per_step * flops.flops_per_token(model, stage.length)
        for stage in base_stages(cfg)
    )


def training_flops(cfg: ToyConfig, variant: str) -> float:
    """Model FLOPs of the variant's fine-tuning: tokens x (6N + 6 L d_attn s) at its physical length s."""
    from megatron_endprompt.model.config import get_preset
    from megatron_endprompt.training import flops

    if variant == "pi_only":
        return 0.0
    model = get_preset("tiny").replace(**cfg.model())
    tokens = cfg.extend_steps * cfg.extend_tokens_per_step
    return tokens * flops.flops_per_token(model, physical_length(cfg, variant))


# ------------------------------------------------------------------------------------------------ evaluation


def task_options(cfg: ToyConfig) -> dict[str, dict[str, int]]:
    """Eval keys drawn like the corpus's: passkeys 1..passkey_max, magic numbers of value_digits digits."""
    from megatron_endprompt.eval.tasks import TASK_OPTIONS

    out: dict[str, dict[str, int]] = {}
    for task in cfg.eval_tasks:
        accepted = TASK_OPTIONS.get(task, {})
        if "key_max" in accepted:
            out[task] = {"key_max": cfg.passkey_max}
        if "number_digits" in accepted:
            out[task] = {"number_digits": cfg.value_digits}
    return out


def evaluate_run(out: Path, cfg: ToyConfig, tokenizer: Path, label: str, ckpt: Path, seed: int) -> dict:
    """`eval.evaluate` on one checkpoint (cached in <out>/eval/<label>.json while the eval settings and the
    checkpoint's lineage stay the same)."""
    from megatron_endprompt.data.tokenizers import load_tokenizer
    from megatron_endprompt.eval.backends import MegatronBackend
    from megatron_endprompt.eval.runner import evaluate

    path = out / "eval" / f"{label}.json"
    request = {
        "tasks": cfg.eval_tasks,
        "lengths": cfg.eval_lengths,
        "depths": cfg.eval_depths,
        "samples": cfg.eval_samples,
        "seed": seed,
        "max_new_tokens": cfg.max_new_tokens,
        "ppl_data": str(out / "corpus" / "heldout.jsonl") if "perplexity" in cfg.eval_tasks else None,
        "ppl_windows": cfg.ppl_windows,
        "task_options": task_options(cfg),
    }
    key = fingerprint(out, {**request, "checkpoint": str(ckpt)}, lineage(ckpt))
    result = cached(path, key, f"eval {label}", legacy_ok=False)
    if result is not None:
        return result
    tok = load_tokenizer("SentencePieceTokenizer", str(tokenizer))
    backend = MegatronBackend.from_checkpoint(ckpt)
    result = evaluate(backend, tok, progress=False, answer_nll=True, **request)
    result.pop("samples", None)  # keep the files small; scores per length and depth stay
    result["fingerprint"] = key
    write_json(path, result)
    logger.info("eval %s: %s", label, result["results"])
    return result


def run_all(out: Path, cfg: ToyConfig) -> dict:
    """Data, base, every variant x seed, evaluation; returns the collected results (also results.json)."""
    tok, data = build_all(out, cfg)
    base, base_seconds = train_base(out, cfg, data)
    variants = {}
    for variant in cfg.variants:
        row = {
            "physical_length": physical_length(cfg, variant),
            "flops": training_flops(cfg, variant),
            "seconds": [],
            "evals": [],
        }
        for seed in cfg.seeds:
            ckpt, seconds = extend(out, cfg, data, base, variant, seed)
            row["seconds"].append(seconds)
            row["evals"].append(evaluate_run(out, cfg, tok, f"{variant}_s{seed}", ckpt, seed))
        variants[variant] = row
    # The base is evaluated last: several processes splitting `variants` over one --out start their own work
    # at once, and whichever finishes first leaves the base evaluation cached for the others.
    base_row = {
        "seconds": base_seconds,
        "physical_length": cfg.base_length,
        "flops": base_flops(cfg),
        "evals": [evaluate_run(out, cfg, tok, "base", base, 0)],
    }
    rows = {"base": base_row, **variants}
    results = {"config": dataclasses.asdict(cfg), "rows": rows}
    write_json(out / "results.json", results)
    return results


# ------------------------------------------------------------------------------------------------ report


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
        precision_note(cfg),
        "",
    ]
    if "passkey" in cfg["eval_tasks"]:
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
            lines += depth_table(rows, cfg, task)
    lines += ["Settings:", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path:
    """Accuracy vs prompt length per task, one line per variant (mean over seeds, std as error bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, rows = results["config"], results["rows"]
    tasks = report_tasks(cfg)
    ncols = min(2, len(tasks))
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(tasks) :]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for name, row in rows.items():
            stats = [score(row, task, n) for n in cfg["eval_lengths"]]
            ax.errorbar(
                cfg["eval_lengths"],
                [m for m, _ in stats],
                yerr=[s for _, s in stats],
                marker="o",
                capsize=3,
                label=row_label(name, cfg),
                linestyle="--" if name in ("base", "pi_only") else "-",
            )
        ax.axvline(cfg["base_length"], color="grey", linewidth=0.8)
        ax.set_xscale("log", base=2)
        if task.endswith(NLL_SUFFIX):
            ax.axhline(2.303, color="grey", linestyle=":", linewidth=0.8)  # ln 10: a uniform guess per digit
            ax.set_ylabel("answer NLL (nats/token; lower is better)")
        elif task.startswith("perplexity"):
            ax.set_yscale("log")
            ax.set_ylabel("held-out perplexity" + (" (last quarter)" if task.endswith("tail") else ""))
        else:
            ax.set_ylim(-5, 105)
            ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{task} (P0 = {cfg['base_length']}, T = {cfg['base_length'] * cfg['factor']})")
        ax.set_xlabel("prompt length (tokens)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores visible, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/toy_reproduction"), help="work directory")
    p.add_argument(
        "--config", type=Path, default=Path(__file__).with_name("config.yaml"), help="settings YAML"
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="key=value override (repeatable)"
    )
    p.add_argument("--report-dir", type=Path, default=Path("docs/results"), help="where the .md and .png go")
    p.add_argument("--name", default="toy_reproduction", help="report file name (without suffix)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from <out>/results.json")
    p.add_argument("--note", default=None, help="a paragraph added to the report (e.g. machine load)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = load_toy_config(args.config if args.config.is_file() else None, args.overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if args.report_only:
        results = json.loads((args.out / "results.json").read_text())
        meta = {**results["meta"], "command": recorded_command(shlex.split(results["meta"]["command"])[1:])}
    else:
        results = run_all(args.out, cfg)
        meta = {
            "command": recorded_command([sys.argv[0], *(argv or sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "hardware": hardware(),
            "wall_minutes": (time.time() - start) / 60,
        }
        results["meta"] = meta
        write_json(args.out / "results.json", results)
    report = args.report_dir / f"{args.name}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    png = plot(results, args.report_dir / f"{args.name}.png")
    note = f"\nNote: {args.note}\n" if args.note else ""
    report.write_text(markdown(results, meta) + note + f"\n![scores vs length]({png.name})\n")
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
