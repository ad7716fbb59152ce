"""Streaming corpus reading and per-document decoding (runs in the tokenizer workers).

Readers yield `RawDoc`s lazily (memory does not grow with corpus size); `decode_doc` turns one into text or a
skip reason. Supported inputs: .jsonl, .jsonl.gz (one JSON object per line), .parquet (columns named by
--json-keys), .txt (the whole file is one document).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# Skip reasons counted in the build summary and meta.json.
REASONS: tuple[str, ...] = (
    "blank_line",
    "malformed_json",
    "missing_key",
    "not_text",
    "empty_text",
    "invalid_utf8",
    "too_short",
)
SUFFIXES: tuple[str, ...] = (".jsonl", ".jsonl.gz", ".parquet", ".txt")


@dataclass(frozen=True)
class RawDoc:
    """One undecoded document and where it came from (file:line for errors)."""

    source: str
    line: int
    kind: str  # "json" (bytes of a JSON line), "record" (dict of column values), "text" (bytes of a .txt)
    payload: object


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files named by --input (globs expanded, each pattern's matches sorted); errors name the flag."""
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        for path in matches:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--input {path!r} is not a file")
            if not path.endswith(SUFFIXES):
                raise ValueError(f"--input {path!r}: unsupported file type (expected one of {SUFFIXES})")
            files.append(path)
    return files


def _iter_lines(path: str, opener) -> Iterator[RawDoc]:
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                yield RawDoc(path, lineno, "json", line.rstrip(b"\r\n"))
    except (OSError, EOFError, zlib.error) as e:
        # A corrupt or truncated .gz raises without a file name; every read error names the file and line.
        if isinstance(e, OSError) and e.filename is not None:
            raise
        raise OSError(getattr(e, "errno", None), f"read error after line {lineno}: {e}", path) from None


def _iter_parquet(path: str, keys: Sequence[str]) -> Iterator[RawDoc]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    present = [k for k in keys if k in pf.schema_arrow.names]
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=present or None):
        columns = {k: batch.column(k).to_pylist() for k in present}
        for j in range(batch.num_rows):
            row += 1
            yield RawDoc(path, row, "record", {k: v[j] for k, v in columns.items()})


def iter_documents(files: Sequence[str], keys: Sequence[str]) -> Iterator[RawDoc]:
    """All documents of all files, in order."""
    for path in files:
        if path.endswith(".jsonl.gz"):
            yield from _iter_lines(path, gzip.open)
        elif path.endswith(".jsonl"):
            yield from _iter_lines(path, open)
        elif path.endswith(".parquet"):
            yield from _iter_parquet(path, keys)
        else:
            with open(path, "rb") as f:
                yield RawDoc(path, 1, "text", f.read())


def _join_keys(record: dict, keys: Sequence[str]) -> tuple[str | None, str | None]:
    """Text of the --json-keys (joined by a newline when several) or a skip reason."""
    parts = []
    for key in keys:
        value = record.get(key)
        if value is None:
            return None, "missing_key"
        if not isinstance(value, str):
            return None, "not_text"
        parts.append(value)
    return "\n".join(parts), None


def decode_doc(doc: RawDoc, keys: Sequence[str]) -> tuple[str | None, str | None]:
    """(text, None) for a usable document, (None, reason) otherwise; reason in REASONS."""
    if doc.kind == "record":
        text, reason = _join_keys(doc.payload, keys)
    else:
        raw = doc.payload
        if doc.kind == "json" and not raw.strip():
            return None, "blank_line"
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid_utf8"
        if doc.kind == "text":
            text, reason = decoded, None
        else:
            try:
                record = json.loads(decoded)
            except json.JSONDecodeError:
                return None, "malformed_json"
            if not isinstance(record, dict):
                return None, "malformed_json"
            text, reason = _join_keys(record, keys)
    if reason is None and not text.strip():
        return None, "empty_text"
    return text, reason
