"""Tokenizers used by the builder: SentencePiece (.model) and Hugging Face (local dir or tokenizer.json), offline.

`encode` never adds BOS/EOS: the builder decides where EOD goes (--append-eod) and where cues go.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

TOKENIZER_TYPES: tuple[str, ...] = ("SentencePieceTokenizer", "HuggingFaceTokenizer")
# End-of-document candidates when a tokenizer.json carries no config saying which token is EOS (first match wins).
_EOD_CANDIDATES = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|eot_id|>", "[SEP]")
_BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "[CLS]")


class Tokenizer(Protocol):
    """What the builder needs from a tokenizer."""

    name: str
    vocab_size: int
    eod: int
    bos: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...


# Longest text handed to one `encode` call. Tokenizing a whole 50 MB document at once held 6.7 GB (the HF
# tokenizer's per-token offsets and strings); pieces of at most about this many characters keep it bounded.
DEFAULT_MAX_CHARS_PER_ENCODE = 1_000_000
_WHITESPACE_RUN_START = re.compile(r"(?<=\S)\s")


def whitespace_pieces(text: str, max_chars: int) -> Iterator[str]:
    """Cut `text` into pieces that concatenate back to it; a text of at most `max_chars` characters is one piece.

    Each cut is at the first whitespace run that starts at or after `max_chars` characters into the current
    piece (a non-whitespace character followed by whitespace: the cut goes between them, so the whitespace
    opens the next piece, as byte-level BPE and SentencePiece attach it to the following word). A piece with no
    such run within its next `max_chars` characters is cut hard at `max_chars`.
    """
    start = 0
    while len(text) - start > max_chars:
        bound = start + max_chars
        found = _WHITESPACE_RUN_START.search(text, bound, bound + max_chars)
        cut = found.start() if found else bound
        yield text[start:cut]
        start = cut
    yield text[start:]


def encode_in_pieces(
    tokenizer: Tokenizer, text: str, max_chars: int = DEFAULT_MAX_CHARS_PER_ENCODE
) -> np.ndarray:
    """`tokenizer.encode(text)` as int32, one `whitespace_pieces` piece at a time (`max_chars` <= 0: whole text).

    Exactly `encode(text)` when the text has at most `max_chars` characters; otherwise the concatenation of the
    pieces' encodings, which equals `encode(text)` for tokenizers whose pre-tokenizer starts a new word at
    whitespace and adds nothing per call (byte-level BPE as in GPT-2/Llama-3, SentencePiece with its default
    whitespace normalisation), and may differ at a cut for others (see docs/data_format.md).
    """
    if max_chars <= 0 or len(text) <= max_chars:
        return np.asarray(tokenizer.encode(text), dtype=np.int32)
    parts = [
        np.asarray(tokenizer.encode(piece), dtype=np.int32) for piece in whitespace_pieces(text, max_chars)
    ]
    return np.concatenate(parts)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (tokenizer identity in meta.json)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class SentencePieceTokenizer:
    """A SentencePiece .model; EOD is the model's eos id (must exist)."""

    def __init__(self, model_file: str | os.PathLike) -> None:
        import sentencepiece as spm

        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"--tokenizer-model: no SentencePiece model file at {path}")
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self.model_path = str(path)
        self.name = f"SentencePieceTokenizer:{path.name}"
        self.vocab_size = int(self._sp.get_piece_size())
        eos = int(self._sp.eos_id())
        if eos < 0:
            raise ValueError(
                f"--tokenizer-model {path}: the SentencePiece model has no EOS id (needed as EOD)"
            )
        self.eod = eos
        self.bos = int(self._sp.bos_id()) if self._sp.bos_id() >= 0 else None
        self.sha256 = file_sha256(path)

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, out_type=int))

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_to_id(self, token: str) -> int | None:
        idx = int(self._sp.piece_to_id(token))
        return idx if self._sp.id_to_piece(idx) == token else None


def _special_from_config(directory: Path, key: str) -> str | None:
    """Read e.g. eos_token from tokenizer_config.json / special_tokens_map.json (string or AddedToken dict)."""
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg_path = directory / fname
        if not cfg_path.is_file():
            continue
        value = json.loads(cfg_path.read_text(encoding="utf-8")).get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None


class HuggingFaceTokenizer:
    """A Hugging Face fast tokenizer from a tokenizer.json (or a local directory holding one), read offline."""

    def __init__(self, model: str | os.PathLike) -> None:
        from tokenizers import Tokenizer as HFTok

        path = Path(model)
        json_path = path / "tokenizer.json" if path.is_dir() else path
        if not json_path.is_file():
            raise FileNotFoundError(f"--tokenizer-model: no tokenizer.json at {json_path}")
        self._tok = HFTok.from_file(str(json_path))
        self.model_path = str(path)
        self.name = f"HuggingFaceTokenizer:{path.name}"
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.sha256 = file_sha256(json_path)
        directory = json_path.parent
        eod = self._resolve(_special_from_config(directory, "eos_token"), _EOD_CANDIDATES)
        if eod is None:
            raise ValueError(
                f"--tokenizer-model {path}: cannot find an EOS/EOD token (tried {_EOD_CANDIDATES})"
            )
        self.eod = eod
        self.bos = self._resolve(_special_from_config(directory, "bos_token"), _BOS_CANDIDATES)
        # whether the tokenizer's own encoding starts with BOS (Llama 3's does; SmolLM2's names <|im_start|> as its
        # bos_token but never prepends it): evaluation prompts follow the tokenizer, as the model was trained
        first = self._tok.encode("a", add_special_tokens=True).ids[:1]
        self.prepends_bos = self.bos is not None and first == [self.bos]

    def _resolve(self, configured: str | None, candidates: tuple[str, ...]) -> int | None:
        for tok in ((configured,) if configured else ()) + candidates:
            idx = self._tok.token_to_id(tok)
            if idx is not None:
                return int(idx)
        return None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        idx = self._tok.token_to_id(token)
        return None if idx is None else int(idx)


class AutoHFTokenizer:
    """A local Hugging Face tokenizer directory without tokenizer.json (e.g. a slow SentencePiece one), loaded
    with transformers.AutoTokenizer offline."""

    def __init__(self, directory: str | os.PathLike) -> None:
        from transformers import AutoTokenizer

        path = Path(directory)
        self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model_path = str(path)
        self.name = f"HuggingFaceTokenizer:{path.name}"
        self.vocab_size = len(self._tok)
        if self._tok.eos_token_id is None:
            raise ValueError(f"--tokenizer-model {path}: the tokenizer has no eos_token (needed as EOD)")
        self.eod = int(self._tok.eos_token_id)
        self.bos = None if self._tok.bos_token_id is None else int(self._tok.bos_token_id)
        self.prepends_bos = self.bos is not None and self._tok("a")["input_ids"][:1] == [self.bos]
        digest = hashlib.sha256()
        for f in sorted(p for p in path.iterdir() if p.is_file() and "token" in p.name):
            digest.update(f.name.encode() + bytes.fromhex(file_sha256(f)))
        self.sha256 = digest.hexdigest()

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def token_to_id(self, token: str) -> int | None:
        idx = self._tok.convert_tokens_to_ids(token)
        return (
            None
            if idx is None or idx == self._tok.unk_token_id and token != self._tok.unk_token
            else int(idx)
        )


def load_tokenizer(tokenizer_type: str, tokenizer_model: str | os.PathLike) -> Tokenizer:
    """Build a tokenizer from --tokenizer-type and --tokenizer-model (local files only)."""
    # The tokenizers library spawns its own threads; builder workers are processes already.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(tokenizer_model)
    if tokenizer_type == "HuggingFaceTokenizer":
        path = Path(tokenizer_model)
        if path.is_dir() and not (path / "tokenizer.json").is_file():
            return AutoHFTokenizer(path)
        return HuggingFaceTokenizer(tokenizer_model)
    raise ValueError(f"--tokenizer-type must be one of {TOKENIZER_TYPES}, got {tokenizer_type!r}")


def train_sentencepiece(
    text_iter_or_file: Iterable[str] | str | os.PathLike,
    model_prefix: str | os.PathLike,
    vocab_size: int = 512,
    user_defined_symbols: Iterable[str] = ("<|eot|>",),
    model_type: str = "bpe",
    split_digits: bool = False,
) -> str:
    """Train a small SentencePiece model offline (tests, demo); returns the .model path.

    `split_digits` makes every digit its own piece, as the Llama-2 tokenizer does: numbers are then copied digit
    by digit, which is what passkey retrieval asks of a small model (the toy reproduction turns it on).

    Ids: unk 0, bos 1, eos 2 (the EOD), no pad. `user_defined_symbols` become single pieces (e.g. an end-of-turn
    token usable as a cue with `--cue @token:<|eot|>`). `hard_vocab_limit=False` lets tiny corpora train.
    """
    import sentencepiece as spm

    kwargs = dict(
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        user_defined_symbols=list(user_defined_symbols),
        num_threads=1,
        minloglevel=2,
        byte_fallback=True,
        split_digits=split_digits,
    )
    if isinstance(text_iter_or_file, str | os.PathLike):
        spm.SentencePieceTrainer.train(input=str(text_iter_or_file), **kwargs)
    else:
        lines = (line for text in text_iter_or_file for line in text.splitlines() if line.strip())
        spm.SentencePieceTrainer.train(sentence_iterator=lines, **kwargs)
    return f"{model_prefix}.model"
