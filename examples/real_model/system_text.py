"""Real English text every Debian/Ubuntu machine has: licences and package documentation under /usr/share.

Training text: /usr/share/common-licenses and the copyright, README, NEWS and changelog files of /usr/share/doc
(gzip read), duplicates removed, taken in a hash order up to a character budget. Held-out text: the longest
changelog/NEWS files of packages whose documentation is kept out of training entirely (changelogs are long, their
text does not recur in other packages the way licence texts do).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

ROOTS = (Path("/usr/share/common-licenses"), Path("/usr/share/doc"))
NAME_PREFIXES = ("copyright", "readme", "news", "changelog", "changes", "authors", "todo")
LONG_KINDS = ("changelog", "news")
HELDOUT_DOCS = 4


def _wanted(path: Path) -> bool:
    name = path.name.lower()
    if path.parent == ROOTS[0]:
        return True
    return name.startswith(NAME_PREFIXES) and not name.endswith((".html", ".htm", ".png", ".svg"))


def _read(path: Path) -> str | None:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None
    return text if "\x00" not in text else None


def system_documents(roots: tuple[Path, ...] = ROOTS) -> Iterator[tuple[Path, str]]:
    """(path, text) of every distinct readable text file of the roots, in a stable hash order."""
    paths = [p for root in roots if root.is_dir() for p in root.rglob("*") if p.is_file() and _wanted(p)]
    seen: set[str] = set()
    for path in sorted(paths, key=lambda p: hashlib.sha1(str(p).encode()).hexdigest()):
        text = _read(path)
        if text is None or len(text) < 200:
            continue
        digest = hashlib.sha1(text.encode()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            yield path, text


def _package(path: Path) -> str:
    return path.parent.name if path.parent != ROOTS[0] else "common-licenses"


def write_corpus(out: Path, train_chars: int, heldout_min_chars: int, heldout_chars: int) -> dict:
    """train.jsonl and heldout.jsonl under `out`; returns counts and the held-out sources."""
    docs = list(system_documents())
    long_docs = [
        (p, t) for p, t in docs if len(t) >= heldout_min_chars and p.name.lower().startswith(LONG_KINDS)
    ]
    # HELDOUT_DOCS documents, each cut to an equal share: windows of the longest length span several sources
    share = heldout_chars // HELDOUT_DOCS
    heldout, held_packages = [], set()
    for path, text in sorted(long_docs, key=lambda d: -len(d[1]))[:HELDOUT_DOCS]:
        heldout.append((path, text[:share]))
        held_packages.add(_package(path))
    train, total = [], 0
    for path, text in docs:
        if _package(path) in held_packages or total >= train_chars:
            continue
        train.append((path, text))
        total += len(text)
    out.mkdir(parents=True, exist_ok=True)
    for name, items in (("train", train), ("heldout", heldout)):
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for path, text in items:
                f.write(json.dumps({"text": text, "source": str(path)}) + "\n")
    return {
        "documents_found": len(docs),
        "train_documents": len(train),
        "train_chars": sum(len(t) for _, t in train),
        "heldout_documents": [str(p) for p, _ in heldout],
        "heldout_chars": sum(len(t) for _, t in heldout),
    }
