"""Synthetic vocabularies: keys, values and words for the tasks, generated offline and deterministically.

RULER draws keys from a word list package and haystacks from essays; we need no download, so keys are
adjective-noun pairs from small built-in lists, and the aggregation tasks use pronounceable pseudo-words.
"""

from __future__ import annotations

import random
import string
import uuid

ADJECTIVES = (
    "ancient", "bitter", "brave", "bright", "calm", "clever", "cold", "curious", "damp", "dark", "eager", "early",
    "empty", "fancy", "fierce", "gentle", "giant", "golden", "happy", "heavy", "hollow", "honest", "hungry",
    "icy", "jolly", "kind", "lazy", "little", "lively", "lonely", "loud", "lucky", "mighty", "modern", "narrow",
    "noisy", "odd", "old", "pale", "plain", "polite", "proud", "quick", "quiet", "rapid", "rare", "rough", "round",
    "rusty", "sharp", "shiny", "silent", "silver", "sleepy", "slow", "smooth", "soft", "solid", "sour", "steep",
    "sticky", "strong", "sunny", "sweet", "swift", "tall", "tame", "tender", "thin", "tiny", "wild", "windy",
    "wise", "wooden", "young",
)  # fmt: skip
NOUNS = (
    "anchor", "apple", "arrow", "badger", "basket", "beacon", "bridge", "bucket", "cabin", "camel", "candle",
    "canyon", "castle", "cellar", "cliff", "clock", "cloud", "comet", "copper", "cottage", "crystal", "desert",
    "dragon", "drum", "eagle", "engine", "falcon", "feather", "forest", "fountain", "garden", "glacier", "harbor",
    "hammer", "island", "jacket", "kettle", "ladder", "lantern", "lemon", "meadow", "mirror", "monkey", "needle",
    "orchard", "otter", "palace", "parrot", "pebble", "pepper", "pillow", "pirate", "planet", "pocket", "puzzle",
    "rabbit", "river", "rocket", "saddle", "shadow", "spider", "squirrel", "statue", "tiger", "tower", "tunnel",
    "valley", "violin", "wagon", "walnut", "whale", "window", "wizard", "zebra",
)  # fmt: skip
VERBS = (
    "admires", "builds", "carries", "chases", "cleans", "climbs", "collects", "crosses", "draws", "finds",
    "follows", "guards", "holds", "joins", "keeps", "leaves", "lifts", "meets", "moves", "opens", "paints",
    "passes", "pulls", "pushes", "reaches", "repairs", "shares", "sees", "visits", "watches",
)  # fmt: skip
PLACES = ("near", "behind", "under", "beside", "above", "inside", "beyond", "around")

# The passkey / RULER 'repeat' noise (Landmark attention, PoSE, RULER niah_single_1).
REPEAT_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NOISE_SENTENCES = tuple(s.strip() + "." for s in REPEAT_NOISE.split(".") if s.strip())
NOISE_WORDS = tuple(REPEAT_NOISE.split())

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def random_key(rng: random.Random) -> str:
    """An adjective-noun key such as `lucky-otter` (RULER's `words` needle type)."""
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def random_number(rng: random.Random, digits: int = 7) -> str:
    """A number with exactly `digits` digits (RULER's `numbers` needle type)."""
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def random_uuid(rng: random.Random) -> str:
    """A version-4 UUID drawn from `rng` (RULER's `uuids` needle type)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def random_value(kind: str, rng: random.Random) -> str:
    """Draw a needle key or value of `kind` in {words, numbers, uuids}."""
    makers = {"words": random_key, "numbers": random_number, "uuids": random_uuid}
    if kind not in makers:
        raise ValueError(f"unknown needle type {kind!r}; choose one of {sorted(makers)}")
    return makers[kind](rng)


def distinct(draw, rng: random.Random, n: int, exclude: set[str] | None = None) -> list[str]:
    """n distinct values from `draw(rng)`, none of them in `exclude`."""
    seen = set(exclude or ())
    out: list[str] = []
    while len(out) < n:
        value = draw(rng)
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def prose_sentence(rng: random.Random) -> str:
    """A random sentence of synthetic prose (our download-free stand-in for RULER's essay haystack)."""
    subject = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    obj = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    return f"The {subject} {rng.choice(VERBS)} the {obj} {rng.choice(PLACES)} the {rng.choice(NOUNS)}."


def pseudo_words(rng: random.Random, n: int) -> list[str]:
    """n distinct pronounceable pseudo-words of 2-3 syllables (the common-words vocabulary)."""

    def draw(r: random.Random) -> str:
        return "".join(r.choice(_CONSONANTS) + r.choice(_VOWELS) for _ in range(r.choice((2, 3))))

    return distinct(draw, rng, n)


def coded_words(rng: random.Random, n: int, length: int = 6) -> list[str]:
    """n distinct random lowercase strings (RULER's frequent-words 'coded' vocabulary)."""
    return distinct(lambda r: "".join(r.choices(string.ascii_lowercase, k=length)), rng, n)
