"""Build EndPrompt training data: documents -> tokens -> fixed-length samples + segments, written atomically.

Pipeline: corpus readers (streaming) -> tokenizer workers (ordered, bounded queue) -> `Packer` (samples, segments,
cues; one RNG per sample seeded by (seed, sample index)) -> .bin/.seg written to temporary files -> .idx and
meta.json -> atomic renames (.idx last). The outputs depend only on the inputs, the configuration and the seed,
not on --workers.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field

import numpy as np

from megatron_endprompt.data import corpus
from megatron_endprompt.data.dataset import META_FORMAT, META_VERSION
from megatron_endprompt.data.indexed import token_dtype, write_index
from megatron_endprompt.data.packing import PACKING_MODES, Packer
from megatron_endprompt.data.sidecar import SIDECAR_VERSION, SidecarWriter
from megatron_endprompt.data.tokenizers import DEFAULT_MAX_CHARS_PER_ENCODE, encode_in_pieces, load_tokenizer
from megatron_endprompt.positions import SchemeConfig

logger = logging.getLogger(__name__)
OUTPUT_SUFFIXES = (".bin", ".seg", ".origin.npy", ".meta.json", ".idx")  # commit order: .idx last


@dataclass
class BuildConfig:
    """Everything that defines a build (CLI flags of tools/build_endprompt_data.py)."""

    input: list[str]
    """Input files or globs (--input): .jsonl, .jsonl.gz, .parquet, .txt."""
    output_prefix: str
    """Output prefix (--output-prefix): writes <prefix>.bin/.idx/.seg/.meta.json."""
    tokenizer_type: str
    """SentencePieceTokenizer or HuggingFaceTokenizer (--tokenizer-type)."""
    tokenizer_model: str
    """A .model file, a tokenizer.json or a local directory (--tokenizer-model)."""
    scheme: SchemeConfig = field(default_factory=SchemeConfig)
    """Position scheme (--scheme, --seq-length, --target-length, --terminal-length, --placement, --pose-chunks,
    --tail-source)."""
    json_keys: list[str] = field(default_factory=lambda: ["text"])
    """Keys (or parquet columns) holding the text (--json-keys); several are joined by a newline."""
    cues: list[str] = field(default_factory=list)
    """Cue set for the endprompt schemes (--cue / --cue-file): text, '@eod' or '@token:NAME'."""
    packing: str = "concat"
    """concat: documents (+EOD) form one stream cut into samples; aligned: the same, but every sample starts at a
    document start (the document that overflows a sample is cut, its rest dropped); document: one document per
    sample (--packing)."""
    append_eod: bool = False
    """Append the tokenizer's EOD after each document (--append-eod)."""
    prepend_bos: bool = False
    """Put the tokenizer's BOS before each document (--prepend-bos; off by default). Llama-3 and Llama-2 saw a BOS
    at the start of every pretraining document, so continued pretraining of them wants it; a tokenizer without a
    BOS token is refused."""
    seed: int = 1234
    """Seed of all randomness (--seed): cue choice, random placement, PoSE chunks and biases."""
    workers: int = 1
    """Tokenizer processes (--workers); 1 tokenises in the main process."""
    strict: bool = False
    """Stop at the first bad document with file:line and the reason (--strict)."""
    batch_docs: int = 256
    """Documents per worker task (--batch-docs)."""
    max_chars_per_encode: int = DEFAULT_MAX_CHARS_PER_ENCODE
    """A longer document is tokenized in pieces cut at whitespace past this many characters, so memory stays
    bounded (--max-chars-per-encode; 0 = whole documents). See `tokenizers.whitespace_pieces` for the rule."""
    progress: bool = False
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        # Paths may arrive as pathlib objects; meta.json stores strings.
        self.input = [
            str(x) for x in ([self.input] if isinstance(self.input, str | os.PathLike) else self.input)
        ]
        self.output_prefix, self.tokenizer_model = str(self.output_prefix), str(self.tokenizer_model)

    def validate(self) -> None:
        """Checks that need no tokenizer (the cue length check runs once the tokenizer is loaded)."""
        if self.packing not in PACKING_MODES:
            raise ValueError(f"--packing must be one of {', '.join(PACKING_MODES)}, got {self.packing!r}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.max_chars_per_encode < 0:
            raise ValueError(f"--max-chars-per-encode must be >= 0, got {self.max_chars_per_encode}")
        if not self.json_keys:
            raise ValueError("--json-keys needs at least one key")
        if self.scheme.uses_cue and not self.cues:
            raise ValueError(
                f"--scheme {self.scheme.scheme} needs a cue set: pass --cue (repeatable) or --cue-file"
            )
        if self.cues and not self.scheme.uses_cue:
            raise ValueError(
                f"--cue/--cue-file only apply to endprompt schemes, not --scheme {self.scheme.scheme}"
            )
        if self.scheme.tail_source == "document" and self.packing == "concat":
            raise ValueError(
                "--tail-source document needs --packing aligned or document (with concat the document that fills "
                "a sample continues into the next one)"
            )
        # Every flag that does not depend on the cue's token count, before any tokenizer work.
        self.scheme.validate(max_cue_length=1 if self.scheme.uses_cue else None)


class BuildError(RuntimeError):
    """A --strict stop (message: file:line: reason)."""


class NoSamplesError(BuildError):
    """The inputs gave no sample; the message has the per-reason counts (nothing is written)."""


def resolve_cues(cues: Sequence[str], tokenizer) -> list[np.ndarray]:
    """Token ids of each cue: '@eod' -> [eod], '@token:NAME' -> [id of NAME], otherwise encode(text)."""
    out = []
    for cue in cues:
        if cue == "@eod":
            ids = [tokenizer.eod]
        elif cue.startswith("@token:"):
            idx = tokenizer.token_to_id(cue[len("@token:") :])
            if idx is None:
                raise ValueError(f"--cue {cue!r}: the tokenizer has no such token")
            ids = [idx]
        else:
            ids = tokenizer.encode(cue)
        if not ids:
            raise ValueError(f"--cue {cue!r} tokenises to nothing")
        out.append(np.asarray(ids, dtype=np.int64))
    return out


# ----------------------------------------------------------------------------------------------------------------
# tokenisation (in workers)

_WORKER: dict = {}


def _init_worker(*args) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up
    _setup_tokenizer(*args)


def _setup_tokenizer(
    tokenizer_type: str,
    tokenizer_model: str,
    keys: list[str],
    append_eod: bool,
    prepend_bos: bool,
    max_chars: int,
) -> None:
    tok = load_tokenizer(tokenizer_type, tokenizer_model)
    eod, bos = tok.eod if append_eod else None, tok.bos if prepend_bos else None
    _WORKER.update(tok=tok, keys=keys, eod=eod, bos=bos, max_chars=max_chars)


def _tokenize_batch(batch: list[corpus.RawDoc]) -> list[tuple[str | None, np.ndarray | None, int]]:
    """(reason, tokens, n_chars) per document, in order."""
    tok, keys, eod = _WORKER["tok"], _WORKER["keys"], _WORKER["eod"]
    out = []
    for doc in batch:
        text, reason = corpus.decode_doc(doc, keys)
        if reason is not None:
            out.append((reason, None, 0))
            continue
        ids = encode_in_pieces(tok, text, _WORKER["max_chars"])
        if _WORKER["bos"] is not None:
            ids = np.concatenate([np.asarray([_WORKER["bos"]], dtype=ids.dtype), ids])
        if eod is not None:
            ids = np.append(ids, np.int32(eod))
        out.append((None, ids, len(text)))
    return out


def _batches(docs: Iterator[corpus.RawDoc], size: int) -> Iterator[list[corpus.RawDoc]]:
    batch: list[corpus.RawDoc] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenized_documents(cfg: BuildConfig, files: list[str]) -> Iterator[tuple[corpus.RawDoc, tuple]]:
    """(raw doc, (reason, tokens, n_chars)) in input order; at most 4 x workers batches in flight."""
    init_args = (
        cfg.tokenizer_type, cfg.tokenizer_model, list(cfg.json_keys), cfg.append_eod, cfg.prepend_bos,
        cfg.max_chars_per_encode,
    )  # fmt: skip
    batches = _batches(corpus.iter_documents(files, cfg.json_keys), cfg.batch_docs)
    if cfg.workers == 1:
        _setup_tokenizer(*init_args)
        for batch in batches:
            yield from zip(batch, _tokenize_batch(batch), strict=True)
        return
    # fork is fast; spawn when torch is loaded (forking a process with its thread pools can deadlock).
    ctx = mp.get_context("spawn" if "torch" in sys.modules else "fork")
    with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=init_args) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append((batch, pool.apply_async(_tokenize_batch, (batch,))))
            if len(pending) >= 4 * cfg.workers:
                done, result = pending.popleft()
                yield from zip(done, result.get(), strict=True)
        while pending:
            done, result = pending.popleft()
            yield from zip(done, result.get(), strict=True)


# ----------------------------------------------------------------------------------------------------------------
# the build


def _tmp_paths(prefix: str) -> dict[str, str]:
    return {s: f"{prefix}{s}.tmp-{os.getpid()}" for s in OUTPUT_SUFFIXES}


def _clean_stale(prefix: str) -> None:
    """Remove temporary files left by an interrupted build of the same prefix."""
    for suffix in OUTPUT_SUFFIXES:
        for path in glob.glob(glob.escape(f"{prefix}{suffix}") + ".tmp-*"):
            os.remove(path)


def _commit(tmp: dict[str, str], prefix: str) -> None:
    """Atomic renames; the old .idx goes first and the new one last, so a crash never pairs files of two builds."""
    if os.path.exists(f"{prefix}.idx"):
        os.remove(f"{prefix}.idx")
    for suffix in OUTPUT_SUFFIXES:
        os.replace(tmp[suffix], f"{prefix}{suffix}")


def source_fingerprint(cfg: BuildConfig, files: Sequence[str]) -> str:
    """Identity of the source documents: input file names (not directories) and sizes, and the text keys.

    Datasets built from the same documents (whatever their scheme, P, cues or tokenizer) share it; training
    seeds its sample order with it (data/blended.py), so that such datasets are read in the same order.
    """
    parts = [f"{os.path.basename(f)}:{os.path.getsize(f)}" for f in files] + [
        "keys:" + ",".join(cfg.json_keys)
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _meta(cfg: BuildConfig, files, tok, cue_ids, dtype, counts, seconds) -> dict:
    config = asdict(cfg)
    config.pop("progress")
    config["workers"] = None  # outputs do not depend on it; recorded under throughput
    return {
        "format": META_FORMAT,
        "format_version": META_VERSION,
        "sidecar_version": SIDECAR_VERSION,
        "config": config,
        "input_files": files,
        "source": {"fingerprint": source_fingerprint(cfg, files), "documents": counts["documents_read"]},
        "tokenizer": {
            "type": cfg.tokenizer_type,
            "model": cfg.tokenizer_model,
            "name": tok.name,
            "sha256": tok.sha256,
            "vocab_size": tok.vocab_size,
            "eod": tok.eod,
            "bos": tok.bos,
        },
        "cues": [{"spec": c, "tokens": ids.tolist()} for c, ids in zip(cfg.cues, cue_ids, strict=True)],
        "token_dtype": dtype.name,
        "counts": counts,
        "throughput": {
            "workers": cfg.workers,
            "seconds": round(seconds, 3),
            "tokens_per_second": round(counts["tokens_read"] / max(seconds, 1e-9), 1),
            "documents_per_second": round(counts["documents_read"] / max(seconds, 1e-9), 1),
        },
    }


def build(cfg: BuildConfig) -> dict:
    """Run a build; returns the meta.json content.

    Raises ValueError on bad flags, BuildError under --strict, NoSamplesError when no sample could be made, and
    OSError (with the file name) when a file cannot be read or written; in every case nothing is left behind.
    """
    cfg.validate()
    files = corpus.expand_inputs(cfg.input)
    tok = load_tokenizer(cfg.tokenizer_type, cfg.tokenizer_model)
    if cfg.prepend_bos and tok.bos is None:
        raise ValueError(
            f"--prepend-bos: the tokenizer {cfg.tokenizer_model} has no BOS token; drop --prepend-bos "
            "(or use the model's own tokenizer)"
        )
    cue_ids = resolve_cues(cfg.cues, tok)
    cfg.scheme.validate(max_cue_length=max(len(c) for c in cue_ids) if cue_ids else None)
    dtype = token_dtype(tok.vocab_size)
    out_dir = os.path.dirname(os.path.abspath(cfg.output_prefix))
    created = _make_dirs(out_dir)
    _clean_stale(cfg.output_prefix)
    tmp = _tmp_paths(cfg.output_prefix)
    start = time.perf_counter()
    try:
        with _naming_output_errors(cfg.output_prefix):
            counts = _write_samples(cfg, files, cue_ids, dtype, tmp)
            if counts["samples"] == 0:
                raise NoSamplesError(_no_samples_message(cfg, counts))
            write_index(tmp[".idx"], dtype, counts["samples"], cfg.scheme.seq_length)
            meta = _meta(cfg, files, tok, cue_ids, dtype, counts, time.perf_counter() - start)
            with open(tmp[".meta.json"], "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2, sort_keys=True)
                f.write("\n")
            _commit(tmp, cfg.output_prefix)
    except BaseException:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise
    logger.info("built %s: %s", cfg.output_prefix, meta["counts"])
    return meta


def _make_dirs(directory: str) -> list[str]:
    """Create `directory` and missing parents; returns those created (removed again if the build fails)."""
    missing = []
    while directory and not os.path.exists(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(missing):
        os.mkdir(path)
    return list(reversed(missing))


@contextlib.contextmanager
def _naming_output_errors(prefix: str) -> Iterator[None]:
    """A failed write (a full disk, a file-size limit) raises OSError without a file name; name the output."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or str(e), f"{prefix}.* (--output-prefix)") from None


def _no_samples_message(cfg: BuildConfig, counts: dict) -> str:
    skipped = ", ".join(f"{r}={n}" for r, n in counts["skipped"].items() if n) or "none"
    hints = []
    if counts["documents_read"] == 0:
        hints.append("--input holds no documents")
    if counts["skipped"].get("missing_key"):
        hints.append(f"documents lack --json-keys {' '.join(cfg.json_keys)}")
    if counts["skipped"].get("too_short"):
        hints.append("--packing document skips documents shorter than one sample")
    if counts["tokens_dropped_tail"]:
        hints.append(f"the {counts['tokens_dropped_tail']} tokens left are fewer than one sample")
    return (
        f"0 samples: documents read {counts['documents_read']}, used {counts['documents_used']}, "
        f"skipped: {skipped}; tokens read {counts['tokens_read']}, --seq-length {cfg.scheme.seq_length}"
        + (f" ({'; '.join(hints)})" if hints else "")
        + f". Nothing written to {cfg.output_prefix}"
    )


def _write_samples(cfg: BuildConfig, files, cue_ids, dtype, tmp) -> dict:
    """Stream documents through the packer into the temporary .bin and .seg; returns the counts."""
    from tqdm import tqdm

    skipped: Counter = Counter()
    packer = Packer(cfg.scheme, cue_ids, cfg.seed, cfg.packing)
    sidecar = SidecarWriter(
        tmp[".seg"], cfg.scheme.seq_length, cfg.scheme.target_length, cfg.scheme.max_segments()
    )
    docs_read = tokens_read = 0
    docs = closing(tokenized_documents(cfg, files))  # closing stops the worker pool at once on errors
    with (
        docs,
        open(tmp[".bin"], "wb") as bin_f,
        tqdm(disable=not cfg.progress, unit="doc", desc="build") as bar,
    ):
        for doc, (reason, ids, _) in docs.thing:
            docs_read += 1
            bar.update(1)
            if reason is None:
                tokens_read += len(ids)
                reason = packer.feed(ids)
            if reason is not None:
                skipped[reason] += 1
                if cfg.strict:
                    raise BuildError(f"{doc.source}:{doc.line}: {reason}")
            for tokens, segments in packer.drain():
                bin_f.write(tokens.astype(dtype).tobytes())
                sidecar.add(segments)
    sidecar.close()
    with open(tmp[".origin.npy"], "wb") as f:  # a handle: np.save would append .npy to the temporary name
        np.save(f, packer.origins())
    return {
        "documents_read": docs_read,
        "documents_used": docs_read - sum(skipped.values()),
        "skipped": {r: skipped.get(r, 0) for r in corpus.REASONS},
        "tokens_read": tokens_read,
        **packer.counts(),
    }
