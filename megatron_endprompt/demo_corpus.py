"""A small synthetic "general" corpus for the CPU demo and the toy reproduction.

Real pretraining corpora are large and carry licences; the demo needs a few MB of text that (a) a tiny model
can learn quickly, (b) teaches it to retrieve information across its whole window, and (c) anyone may
redistribute. So we generate it: ordinary short stories from a small grammar, mixed with retrieval documents
that hide a fact in filler and ask for it at the end (passkey in the Landmark/PoSE template, and RULER-style
"special magic number" needles, one or several per document) dense recall lists (word -> number pairs, all
asked back) and, optionally, plain copy practice (a random list said twice) that give a small model many copy
events per token. Everything is deterministic given the seed.

The same corpus serves base pretraining and every extension variant: long-context skills are never trained
with long data, only with the position schemes.

CLI: ``python -m megatron_endprompt.demo_corpus --out corpus.jsonl [--documents 4000] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from megatron_endprompt.eval.tasks import niah, vocab
from megatron_endprompt.eval.tasks import passkey as passkey_task

# Retrieval documents use the evaluation's own templates and key/value generators, so the skills trained here
# are the ones `megatron_endprompt.eval` measures (the answer is appended; the eval asks the model for it).
MAGIC_WORDS = {"some": "A", "are": "is", "are_all": "is", "kind": "number"}  # RULER's singular wording


NAMES = "Ada Ben Cleo Dara Eli Faye Gus Hana Ivo Jun Kai Lena Milo Nora Otto Pia Quin Rosa Sami Tove".split()
PLACES = "market harbor garden library station bakery forest village river school bridge hill".split()
OBJECTS = "apple lamp book coat basket letter map key boat kite cup drum hat ring stone clock".split()
ADJECTIVES = "old small quiet bright green warm heavy busy cold narrow red tall".split()
VERBS_PAST = "found carried painted opened lost bought mended hid shared counted".split()
TIMES = "In the morning|At noon|Later that day|In the evening|On Sunday|After the rain|Before dawn".split("|")


@dataclass(frozen=True)
class CorpusConfig:
    """What to generate; every field has a CLI flag of the same name (dashes for underscores)."""

    documents: int = 4000
    """Number of documents."""
    retrieval_fraction: float = 0.6
    """Share of documents that are retrieval tasks (the rest are ordinary stories)."""
    min_words: int = 5
    """Smallest haystack (filler) of a retrieval document, in words."""
    max_words: int = 150
    """Largest haystack in words (sizes are log-uniform, so short, easy tasks are common); about 1.3 tokens
    per word with the demo tokenizer: pick it so a task fits the training window."""
    passkey_max: int = 50000
    """Passkeys are drawn from 1..passkey_max (the eval uses 1..50000)."""
    value_digits: int = 7
    """Digits of the magic numbers (RULER and the eval use 7)."""
    max_needles: int = 3
    """Magic-number documents hide 1..max_needles needles and ask for each of them, in random order."""
    passkey_weight: float = 1.0
    """Relative frequency of passkey documents among the retrieval documents (magic numbers and recall lists
    weigh 1 each)."""
    repeat_fraction: float = 0.0
    """Share of documents that are copy practice (a random list of words and numbers, then the same list
    again); `retrieval_fraction` applies to the rest. Templated text lets a small model reach a low loss by
    memorising, so it may never learn to copy from context (we measured no induction at all after 7000 updates
    without these); a few percent of plain repeats makes copying pay. 0 keeps the original mix."""
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
        if self.passkey_max < 1:
            raise ValueError(f"--passkey-max must be >= 1, got {self.passkey_max}")
        if not 1 <= self.value_digits <= 18:
            raise ValueError(f"--value-digits must be in [1, 18], got {self.value_digits}")
        if self.passkey_weight < 0:
            raise ValueError(f"--passkey-weight must be >= 0, got {self.passkey_weight}")
        if not 0.0 <= self.repeat_fraction <= 1.0:
            raise ValueError(f"--repeat-fraction must be in [0, 1], got {self.repeat_fraction}")
        if not 1 <= self.max_needles <= 10:
            raise ValueError(f"--max-needles must be in [1, 10], got {self.max_needles}")


def _story_sentence(rng: random.Random, name: str, place: str) -> str:
    """One sentence of a story about `name`; names and places recur: something to attend back to."""
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


def _haystack(rng: random.Random, cfg: CorpusConfig) -> list[str]:
    """Filler sentences, log-uniform in size: the eval's repeated noise, or ordinary story text."""
    num_words = round(math.exp(rng.uniform(math.log(cfg.min_words), math.log(cfg.max_words))))
    if rng.random() < 0.5:
        sentences = list(vocab.NOISE_SENTENCES)
    else:
        sentences = [
            s if s.endswith(".") else s + "." for s in story(rng, max(1, num_words // 8)).split(". ")
        ]
    out, words = [], 0
    while words < num_words:
        sentence = sentences[len(out) % len(sentences)]
        out.append(sentence)
        words += len(sentence.split())
    return out


def _insert(rng: random.Random, sentences: list[str], needles: list[str]) -> str:
    """Insert needles at uniformly random depths (sentence boundaries)."""
    sentences = list(sentences)
    for needle in needles:
        sentences.insert(rng.randint(0, len(sentences)), needle)
    return " ".join(sentences)


def passkey_document(rng: random.Random, cfg: CorpusConfig) -> str:
    """Passkey retrieval in the eval's (Landmark/PoSE) template, answer included."""
    key = rng.randint(1, cfg.passkey_max)
    body = _insert(rng, _haystack(rng, cfg), [passkey_task.NEEDLE.format(key=key)])
    return f"{passkey_task.INSTRUCTION} {body} {passkey_task.QUESTION} {key}."


def magic_number_document(rng: random.Random, cfg: CorpusConfig) -> str:
    """RULER niah wording: 1..max_needles 'special magic number' needles, each asked for, answers included."""
    keys = vocab.distinct(vocab.random_key, rng, rng.randint(1, cfg.max_needles))
    values = [vocab.random_number(rng, cfg.value_digits) for _ in keys]
    needles = [niah.NEEDLE.format(kind="numbers", key=k, value=v) for k, v in zip(keys, values, strict=True)]
    body = _insert(rng, _haystack(rng, cfg), needles)
    questions = []
    for i in rng.sample(range(len(keys)), len(keys)):
        question = niah.QUESTION.format(query=keys[i], **MAGIC_WORDS)
        answer = niah.ANSWER_PREFIX.format(query=keys[i], **MAGIC_WORDS)
        questions.append(f"{question} {answer} {values[i]}.")
    return f"{niah.INTRO.format(**MAGIC_WORDS)} {body} {' '.join(questions)}"


def recall_list_document(rng: random.Random, cfg: CorpusConfig) -> str:
    """Dense copying practice: a list of word -> number pairs, then every pair asked for in random order.

    Each answer is a copy from context, so a small model sees many more copy events per token than the
    one-needle tasks give it (induction heads form sooner); numbers have 1..value_digits digits.
    """
    keys = vocab.distinct(vocab.random_key, rng, rng.randint(2, 8))
    values = [vocab.random_number(rng, rng.randint(1, cfg.value_digits)) for _ in keys]
    pairs = " ".join(f"The number for {k} is {v}." for k, v in zip(keys, values, strict=True))
    order = rng.sample(range(len(keys)), len(keys))
    asks = " ".join(f"What is the number for {keys[i]}? It is {values[i]}." for i in order)
    return f"Remember the numbers. {pairs} {asks}"


def repeat_document(rng: random.Random, cfg: CorpusConfig) -> str:
    """Copy practice: 4..24 distinct random words and numbers, then the same list again. Every item after
    `Again:` is predictable only by copying, and distinct items make "find the previous occurrence, copy what
    followed" unambiguous: the signal from which induction heads form."""

    def item(r: random.Random) -> str:
        if r.random() < 0.25:
            return vocab.random_number(r, r.randint(1, cfg.value_digits))
        return r.choice((*vocab.ADJECTIVES, *vocab.NOUNS, *vocab.VERBS, *NAMES, *OBJECTS, *PLACES))

    listed = " ".join(vocab.distinct(item, rng, rng.randint(4, 24)))
    return f"Say the list again. {listed}. Again: {listed}."


def generate_documents(cfg: CorpusConfig) -> Iterator[str]:
    """Yield `cfg.documents` documents, deterministic in `cfg.seed`."""
    cfg.validate()
    rng = random.Random(cfg.seed)
    makers = (passkey_document, magic_number_document, recall_list_document)
    for _ in range(cfg.documents):
        if cfg.repeat_fraction and rng.random() < cfg.repeat_fraction:  # no draw at 0: old corpora unchanged
            yield repeat_document(rng, cfg)
        elif rng.random() < cfg.retrieval_fraction:
            if cfg.passkey_weight == 1.0:  # the original draw: default corpora stay byte-identical
                yield rng.choice(makers)(rng, cfg)
            else:
                yield rng.choices(makers, weights=(cfg.passkey_weight, 1.0, 1.0))[0](rng, cfg)
        else:
            yield story(rng, rng.randint(3, 12))


def _write_jsonl(path: str | Path, documents: Iterable[str]) -> Path:
    """Documents as JSON lines ``{"text": ...}`` (the builder's input format); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for doc in documents:
            f.write(json.dumps({"text": doc}) + "\n")
    return path


def write_corpus(path: str | Path, cfg: CorpusConfig) -> Path:
    """Write the corpus (`generate_documents`) as JSON lines; returns the path."""
    return _write_jsonl(path, generate_documents(cfg))


def write_passkey_corpus(path: str | Path, cfg: CorpusConfig) -> Path:
    """Passkey documents only (`cfg.documents` of them, haystacks as `cfg` says): a warm-up corpus, where a
    small model first learns to copy from context (examples/toy_reproduction/README.md)."""
    cfg.validate()
    rng = random.Random(cfg.seed)
    return _write_jsonl(path, (passkey_document(rng, cfg) for _ in range(cfg.documents)))


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
