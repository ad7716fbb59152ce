"""A small synthetic "general" corpus for the CPU demo and the toy reproduction.

Real pretraining corpora are large and carry licences; the demo needs a few MB of text that (a) a tiny model can
learn quickly, (b) teaches it to retrieve information across its whole window, and (c) anyone may redistribute.
So we generate it: ordinary short stories from a small grammar, mixed with retrieval documents that hide a fact in
filler and ask for it at the end (passkey in the Landmark/PoSE template, and RULER-style "special magic number"
needles, with one or several needles). Everything is deterministic given the seed.

The same corpus serves base pretraining and every extension variant: long-context skills are never trained
with long data, only with the position schemes.

CLI: ``python -m megatron_endprompt.demo_corpus --out corpus.jsonl [--documents 4000] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The Landmark/PoSE passkey template (see docs/METHOD.md "Evaluation conventions"); the eval uses the same text.
PASSKEY_INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key? The pass key is"

# RULER-style needle (niah_single / niah_multikey family).
MAGIC_NEEDLE = "One of the special magic numbers for {word} is: {value}."
MAGIC_QUESTION = (
    "What is the special magic number for {word} mentioned in the provided text? "
    "The special magic number for {word} mentioned in the provided text is"
)

NAMES = "Ada Ben Cleo Dara Eli Faye Gus Hana Ivo Jun Kai Lena Milo Nora Otto Pia Quin Rosa Sami Tove".split()
PLACES = "market harbor garden library station bakery forest village river school bridge hill".split()
OBJECTS = "apple lamp book coat basket letter map key boat kite cup drum hat ring stone clock".split()
ADJECTIVES = "old small quiet bright green warm heavy busy cold narrow red tall".split()
VERBS_PAST = "found carried painted opened lost bought mended hid shared counted".split()
TIMES = "In the morning|At noon|Later that day|In the evening|On Sunday|After the rain|Before dawn".split("|")
KEY_WORDS = (
    "amber cobalt falcon juniper lantern meadow nickel orchid pepper quartz raven saffron "
    "tulip velvet willow zephyr almond basil cedar dune ember fjord garnet hazel"
).split()


@dataclass(frozen=True)
class CorpusConfig:
    """What to generate; every field has a CLI flag of the same name (dashes for underscores)."""

    documents: int = 4000
    """Number of documents."""
    retrieval_fraction: float = 0.5
    """Share of documents that are retrieval tasks (the rest are ordinary stories)."""
    min_words: int = 20
    """Smallest haystack (filler) size of a retrieval document, in words."""
    max_words: int = 150
    """Largest haystack size in words; pick it so a task fits the training window (about 1.5 tokens per word)."""
    key_min: int = 1
    """Smallest passkey / magic number."""
    key_max: int = 999
    """Largest passkey / magic number (the eval must draw keys from the same range)."""
    max_needles: int = 3
    """Magic-number documents hide 1..max_needles needles and ask for one of them."""
    seed: int = 0
    """Random seed: equal configs give byte-identical corpora."""

    def validate(self) -> None:
        """Raise ValueError naming the flag when a field is out of range."""
        if self.documents < 1:
            raise ValueError(f"--documents must be >= 1, got {self.documents}")
        if not 0.0 <= self.retrieval_fraction <= 1.0:
            raise ValueError(f"--retrieval-fraction must be in [0, 1], got {self.retrieval_fraction}")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 <= --min-words <= --max-words, got {self.min_words}, {self.max_words}")
        if not 0 <= self.key_min < self.key_max:
            raise ValueError(f"need 0 <= --key-min < --key-max, got {self.key_min}, {self.key_max}")
        if not 1 <= self.max_needles <= len(KEY_WORDS):
            raise ValueError(f"--max-needles must be in [1, {len(KEY_WORDS)}], got {self.max_needles}")


def _story_sentence(rng: random.Random, name: str, place: str) -> str:
    """One sentence of a story about `name`; names and places recur so there is something to attend back to."""
    obj, adj, verb = rng.choice(OBJECTS), rng.choice(ADJECTIVES), rng.choice(VERBS_PAST)
    count = rng.randint(2, 9)
    templates = (
        f"{rng.choice(TIMES)}, {name} went to the {adj} {place}.",
        f"{name} {verb} a {adj} {obj} near the {place}.",
        f"The {place} was {adj}, and {name} was happy.",
        f"{name} {verb} {count} {obj}s and gave them to {rng.choice(NAMES)}.",
        f"Then {name} walked home from the {place} with the {obj}.",
        f"{name} said that the {obj} was {adj}.",
    )
    return rng.choice(templates)


def story(rng: random.Random, num_sentences: int) -> str:
    """An ordinary short text: one protagonist, one main place, simple past tense."""
    name, place = rng.choice(NAMES), rng.choice(PLACES)
    return " ".join(_story_sentence(rng, name, place) for _ in range(num_sentences))


def _haystack(rng: random.Random, num_words: int) -> list[str]:
    """Filler as a list of sentences: the passkey filler (as in the eval) or ordinary story text."""
    if rng.random() < 0.5:
        unit = PASSKEY_FILLER.split(". ")
        sentences = [s if s.endswith(".") else s + "." for s in unit]
    else:
        sentences = story(rng, max(1, num_words // 8)).split(". ")
        sentences = [s if s.endswith(".") else s + "." for s in sentences]
    out, words = [], 0
    while words < num_words:
        s = sentences[len(out) % len(sentences)]
        out.append(s)
        words += len(s.split())
    return out


def _insert(rng: random.Random, sentences: list[str], needles: list[str]) -> str:
    """Insert needles at uniformly random depths (sentence boundaries)."""
    sentences = list(sentences)
    for needle in needles:
        sentences.insert(rng.randint(0, len(sentences)), needle)
    return " ".join(sentences)


def passkey_document(rng: random.Random, cfg: CorpusConfig) -> str:
    """Passkey retrieval in the Landmark template, answer included."""
    key = rng.randint(cfg.key_min, cfg.key_max)
    hay = _haystack(rng, rng.randint(cfg.min_words, cfg.max_words))
    body = _insert(rng, hay, [PASSKEY_NEEDLE.format(key=key)])
    return f"{PASSKEY_INSTRUCTION} {body} {PASSKEY_QUESTION} {key}."


def magic_number_document(rng: random.Random, cfg: CorpusConfig) -> str:
    """RULER-style needle(s) 'special magic number for <word>'; asks for one of them, answer included."""
    words = rng.sample(KEY_WORDS, rng.randint(1, cfg.max_needles))
    values = [rng.randint(cfg.key_min, cfg.key_max) for _ in words]
    hay = _haystack(rng, rng.randint(cfg.min_words, cfg.max_words))
    body = _insert(
        rng, hay, [MAGIC_NEEDLE.format(word=w, value=v) for w, v in zip(words, values, strict=True)]
    )
    i = rng.randrange(len(words))
    return f"{body} {MAGIC_QUESTION.format(word=words[i])} {values[i]}."


def generate_documents(cfg: CorpusConfig) -> Iterator[str]:
    """Yield `cfg.documents` documents, deterministic in `cfg.seed`."""
    cfg.validate()
    rng = random.Random(cfg.seed)
    for _ in range(cfg.documents):
        if rng.random() < cfg.retrieval_fraction:
            make = passkey_document if rng.random() < 0.5 else magic_number_document
            yield make(rng, cfg)
        else:
            yield story(rng, rng.randint(3, 12))


def write_corpus(path: str | Path, cfg: CorpusConfig) -> Path:
    """Write the corpus as JSON lines ``{"text": ...}`` (the builder's input format); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for doc in generate_documents(cfg):
            f.write(json.dumps({"text": doc}) + "\n")
    return path


def _parse_args(argv: list[str] | None) -> tuple[Path, CorpusConfig]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output .jsonl path")
    defaults = CorpusConfig()
    for name in CorpusConfig.__dataclass_fields__:
        value = getattr(defaults, name)
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = p.parse_args(argv)
    fields = {k: getattr(args, k) for k in CorpusConfig.__dataclass_fields__}
    return args.out, CorpusConfig(**fields)


def main(argv: list[str] | None = None) -> None:
    out, cfg = _parse_args(argv)
    path = write_corpus(out, cfg)
    print(f"wrote {cfg.documents} documents to {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
