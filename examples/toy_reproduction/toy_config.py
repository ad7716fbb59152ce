"""Settings of the toy reproduction: `ToyConfig` (every YAML key / `--set key=value`, validated in one place)
and `load_toy_config`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from megatron_endprompt.model.config import small_llama_fields

EP_1 = "This is the end of text, please pay attention here"
"""The paper's single sentence cue: its main ET numbers equal its EP_1 row (METHOD.md)."""
PAPER_CUES = (EP_1, "@token:<|eot|>", "End.")
"""EP_1, EP_2 (the tokenizer's end-of-turn token; our SentencePiece models carry <|eot|>), EP_3. A one-token cue
such as EP_2 gives no long-range gradient: its only prediction is made at the last text position."""

SCALING_NAMES = {"linear": "PI", "yarn": "YaRN"}

VARIANTS = (
    "pi_only",
    "contiguous_short",
    "endprompt",
    "endprompt_tail_fixed",
    "endprompt_tail_random",
    "endprompt_tail_document",
    "pose",
    "endprompt_pose",
    "full_length",
)


DECIDING_VARIANTS = (
    "contiguous_short",
    "endprompt",
    "endprompt_tail_fixed",
    "endprompt_tail_document",
    "pose",
)
"""The variants the pre-registered contrasts need (the default run)."""

CONTRASTS = (
    ("endprompt", "contiguous_short"),
    ("endprompt_tail_fixed", "contiguous_short"),
    ("endprompt_tail_document", "contiguous_short"),
    ("endprompt", "pose"),
)
"""Pre-registered before the run (issue 20): variant minus reference, paired by seed."""

MAX_CONTRASTS = 4
"""A Holm correction over more comparisons would leave five seeds no power; more is refused."""

EXTEND_CORPORA = ("mixed", "generic")


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
    extend_steps: int = 150
    """Optimizer steps of every extension variant (equal for all, so equal tokens). 150 sizes the default run
    (5 variants x 5 seeds, then the same on the generic corpus, one base) for <= 2.5 h at --jobs 2 on 2 cores
    (toy README, "Budget")."""
    extend_tokens_per_step: int = 4096
    """Tokens per extension step (global batch = this / physical length: 16 at P0 = 256, 2 at T = 2048)."""
    extend_lr: float = 5e-4
    """Peak LR of the extension."""
    cue_loss_weight: float = 0.1
    """EndPrompt cue loss weight (paper eq. 11)."""
    endprompt_cues: list[str] = field(default_factory=lambda: [EP_1])
    """Cue set of `endprompt` and `endprompt_pose`: EP_1 alone, the paper's main setting (its ET numbers equal its
    EP_1 row). Reports made before 2026-12-05 used all three paper cues (PAPER_CUES), of which EP_2 is one token
    and trains no far position."""
    extend_corpus: str = "mixed"
    """Fine-tuning corpus of every extension variant: `mixed` (the base's general corpus, 80% retrieval documents
    in the evaluation's own templates) or `generic` (the same generator with ordinary stories only, no retrieval
    or copy documents): the control that separates far-position exposure from direct long-range task supervision
    (variants that move text across the jump move retrieval answers across it only with `mixed`). Runs and
    results are stored under their own names in the same --out, so both reuse one base."""
    contrasts: list[list[str]] = field(default_factory=lambda: [list(c) for c in CONTRASTS])
    """Pre-registered contrasts [variant, reference] (at most 4): the report gives the paired difference over
    seeds with a 95% t-interval and Holm-corrected paired t-test p-values, and one verdict line each."""
    terminal_length: int = 20
    """K of endprompt-tail (released recipe: 20)."""
    pose_chunks: int = 2
    """PoSE chunks."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Extension seeds (data order of the fine-tuning and eval prompts); the base model is trained once."""
    variants: list[str] = field(default_factory=lambda: list(DECIDING_VARIANTS))
    """Variants to run."""
    eval_lengths: list[int] = field(default_factory=lambda: [256, 2032])
    """Prompt lengths (the largest + max_new_tokens must fit in T)."""
    eval_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """Needle depths."""
    eval_samples: int = 6
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
        self._validate_contrasts()
        if self.extend_corpus not in EXTEND_CORPORA:
            raise ValueError(f"extend_corpus: one of {EXTEND_CORPORA}, got {self.extend_corpus!r}")
        if not self.endprompt_cues:
            raise ValueError("endprompt_cues: at least one cue")
        for length in (*self.base_curriculum, self.target_length):
            if self.base_tokens_per_step % length and length in self.base_curriculum:
                raise ValueError(f"base_tokens_per_step must be a multiple of every stage length ({length})")
            if self.extend_tokens_per_step % length and length in (self.base_length, self.target_length):
                raise ValueError(f"extend_tokens_per_step must be a multiple of P0 and T ({length})")
        if max(self.eval_lengths) + self.max_new_tokens > self.target_length:
            limit = self.target_length - self.max_new_tokens
            raise ValueError(f"eval_lengths: the largest must be <= T - max_new_tokens = {limit}")

    def _validate_contrasts(self) -> None:
        if len(self.contrasts) > MAX_CONTRASTS:
            raise ValueError(
                f"contrasts: at most {MAX_CONTRASTS} pre-registered contrasts, got {len(self.contrasts)}"
            )
        for pair in self.contrasts:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"contrasts: each is [variant, reference] of two variants, got {pair}")
            missing = [v for v in pair if v not in self.variants]
            if missing:
                raise ValueError(f"contrasts: {pair} needs {missing} in variants")

    @property
    def run_suffix(self) -> str:
        """Appended to run, eval and results names for the generic-corpus control ("" for the mixed corpus)."""
        return "" if self.extend_corpus == "mixed" else f"_{self.extend_corpus}"

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
