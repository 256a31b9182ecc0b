"""Training data for mimo-nano: the Python standard library's source, tokenized, cached and packed.

Corpus. Every ``.py`` file under the running interpreter's ``sysconfig.get_paths()["stdlib"]``,
skipping folders named ``site-packages``/``dist-packages`` (third-party code), ``test``/``tests``
(CPython's test suite, ``lib2to3/tests``, ...), ``idle_test`` and ``__pycache__``, and files that
are not valid UTF-8 or are larger than :data:`MAX_FILE_BYTES`. Files are identified by their
POSIX-style path relative to the stdlib root and listed in sorted order, so the corpus is the same
on every machine running the same Python.

Held-out split. A whole file is held out iff
``int(hashlib.sha1(relpath.encode("utf-8")).hexdigest(), 16) % 100 < heldout_percent``
(default 2). The decision depends on the path alone, so it never changes when other files are
added or removed, and a held-out file never leaks into training through another version of the
corpus.

Packing. Each document is tokenized as plain text (special-token strings inside source code are
*not* turned into control tokens), followed by ``<|endoftext|>``, and all documents are
concatenated in sorted relpath order into one stream. Row ``i`` is ``tokens[i*seq_len : i*seq_len + seq_len + extra]``:
rows overlap by ``extra`` tokens so that every position of the ``seq_len`` inputs has a
next-token target (``extra >= 1``) and, with ``extra = 1 + mtp_depth``, targets for each MTP depth
too: inputs ``row[:, :seq_len]``, depth-k targets ``row[:, 1 + k : 1 + k + seq_len]`` (k = 0 is
the main head). Attention crosses document boundaries; ``<|endoftext|>`` marks them, which is
what the model learns to predict at the end of a file.

Cache. The token stream is saved as ``.npy`` (``uint16`` when the vocabulary has fewer than 65536
ids, else ``int32``) under a name derived from sha256 over the tokenizer's JSON, the sorted
``(relpath, sha1 of file bytes)`` list and :data:`PIPELINE_VERSION`, so a stale cache can never be
read. Files are written to a temporary name and moved into place with ``os.replace``.

Batches. :class:`PackedDataset` serves rows in a fresh random order each epoch
(``numpy.random.default_rng(seed + epoch).permutation``) and can resume at the exact row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tokenizers
import torch
from tqdm import tqdm

from mimo.tokenizer import ENDOFTEXT, Tokenizer

logger = logging.getLogger(__name__)

PIPELINE_VERSION = 1
MAX_FILE_BYTES = 1_000_000
DEFAULT_HELDOUT_PERCENT = 2
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_ENCODE_CHUNK = 64  # files per encode_batch call: big enough for tokenizers' threads, small enough for the bar

FileList = list[tuple[str, str]]


def stdlib_root() -> str:
    """Directory of the running interpreter's standard library."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_files(root: str | None = None) -> FileList:
    """``(relpath, abspath)`` of every corpus file under ``root`` (default: the stdlib), sorted by relpath."""
    root = os.path.abspath(root or stdlib_root())
    if not os.path.isdir(root):
        raise FileNotFoundError(f"corpus root {root!r} is not a directory")
    out: FileList = []
    skipped = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            if os.path.getsize(path) > MAX_FILE_BYTES:
                skipped += 1
                continue
            try:
                with open(path, "rb") as f:
                    f.read().decode("utf-8")
            except (UnicodeDecodeError, OSError):
                skipped += 1
                continue
            out.append((os.path.relpath(path, root).replace(os.sep, "/"), path))
    out.sort()
    logger.info("corpus: %d files under %s (%d skipped: too large or not UTF-8)", len(out), root, skipped)
    return out


def is_heldout(relpath: str, heldout_percent: int = DEFAULT_HELDOUT_PERCENT) -> bool:
    """Whether the file at ``relpath`` belongs to the held-out split (see the module docstring)."""
    return int(hashlib.sha1(relpath.encode("utf-8")).hexdigest(), 16) % 100 < heldout_percent


def split_files(files: Sequence[tuple[str, str]], heldout_percent: int = DEFAULT_HELDOUT_PERCENT
                ) -> tuple[FileList, FileList]:
    """Split ``files`` into ``(train, heldout)`` by :func:`is_heldout`, keeping their order."""
    if not 0 <= heldout_percent <= 100:
        raise ValueError(f"heldout_percent must be in [0, 100], got {heldout_percent}")
    train: FileList = []
    heldout: FileList = []
    for item in files:
        (heldout if is_heldout(item[0], heldout_percent) else train).append(tuple(item))
    return train, heldout


def _as_tokenizer(tokenizer: Tokenizer | tokenizers.Tokenizer) -> Tokenizer:
    return tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)


def _read_files(files: Sequence[tuple[str, str]]) -> list[bytes]:
    out = []
    for _, path in files:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def cache_key(tokenizer: Tokenizer | tokenizers.Tokenizer, files: Sequence[tuple[str, str]],
              contents: Sequence[bytes] | None = None) -> str:
    """sha256 naming the token stream of ``files`` under ``tokenizer`` (see the module docstring)."""
    tok = _as_tokenizer(tokenizer)
    contents = _read_files(files) if contents is None else contents
    h = hashlib.sha256()
    h.update(f"mimo-data-v{PIPELINE_VERSION}\n".encode())
    h.update(tok.backend.to_str().encode("utf-8"))
    listing = sorted((rel, hashlib.sha1(data).hexdigest()) for (rel, _), data in zip(files, contents))
    h.update(json.dumps(listing).encode("utf-8"))
    return h.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.int32)


def tokenize_documents(tokenizer: Tokenizer | tokenizers.Tokenizer, texts: Sequence[str],
                       progress: bool = True) -> np.ndarray:
    """Tokenize ``texts`` as plain text, each followed by ``<|endoftext|>``, into one stream."""
    tok = _as_tokenizer(tokenizer)
    eot = tok.token_to_id(ENDOFTEXT)
    if eot is None:
        raise ValueError(f"the tokenizer has no {ENDOFTEXT} token to separate documents")
    # A copy with encode_special_tokens=True: source code that mentions "<|endoftext|>" or "<think>"
    # must train on those characters, not on control tokens.
    plain = tokenizers.Tokenizer.from_str(tok.backend.to_str())
    plain.encode_special_tokens = True
    dtype = token_dtype(tok.vocab_size)
    pieces: list[np.ndarray] = []
    eot_arr = np.array([eot], dtype=dtype)
    with tqdm(total=len(texts), unit="file", desc="tokenizing", disable=not progress) as bar:
        for start in range(0, len(texts), _ENCODE_CHUNK):
            chunk = list(texts[start:start + _ENCODE_CHUNK])
            for enc in plain.encode_batch(chunk, add_special_tokens=False):
                pieces.append(np.asarray(enc.ids, dtype=dtype))
                pieces.append(eot_arr)
            bar.update(len(chunk))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def _atomic_write(path: str, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def build_token_cache(tokenizer: Tokenizer | tokenizers.Tokenizer, files: Sequence[tuple[str, str]],
                      cache_dir: str | os.PathLike[str], progress: bool = True) -> np.ndarray:
    """The token stream of ``files``: loaded from ``cache_dir`` when cached, else built (with a progress bar
    unless ``progress`` is False) and saved.

    The cached array is memory-mapped read-only; a freshly built one is returned in memory.
    """
    tok = _as_tokenizer(tokenizer)
    cache_dir = os.fspath(cache_dir)
    files = sorted(files)  # the key is order-free, so the stream must be too
    os.makedirs(cache_dir, exist_ok=True)
    contents = _read_files(files)
    key = cache_key(tok, files, contents)
    path = os.path.join(cache_dir, f"tokens-{key[:24]}.npy")
    if os.path.exists(path):
        try:
            tokens = np.load(path, mmap_mode="r")
            logger.info("token cache hit: %s (%d tokens)", path, tokens.shape[0])
            return tokens
        except (ValueError, OSError) as e:  # unreadable (e.g. a different numpy wrote junk): rebuild
            logger.warning("token cache %s is unreadable (%s); rebuilding", path, e)
    texts = [data.decode("utf-8") for data in contents]
    tokens = tokenize_documents(tok, texts, progress=progress)
    _atomic_write(path, lambda f: np.save(f, tokens, allow_pickle=False))
    meta = {"key": key, "pipeline_version": PIPELINE_VERSION, "num_files": len(files),
            "num_tokens": int(tokens.shape[0]), "dtype": str(tokens.dtype), "vocab_size": tok.vocab_size}
    _atomic_write(path[: -len(".npy")] + ".json", lambda f: f.write(json.dumps(meta, indent=2).encode("utf-8")))
    logger.info("token cache written: %s (%d files, %d tokens)", path, len(files), tokens.shape[0])
    return tokens


def load_stdlib_tokens(tokenizer: Tokenizer | tokenizers.Tokenizer, cache_dir: str | os.PathLike[str],
                       heldout_percent: int = DEFAULT_HELDOUT_PERCENT) -> tuple[np.ndarray, np.ndarray]:
    """``(train_tokens, heldout_tokens)`` for the stdlib corpus, through the cache."""
    train, heldout = split_files(stdlib_files(), heldout_percent)
    return build_token_cache(tokenizer, train, cache_dir), build_token_cache(tokenizer, heldout, cache_dir)


def num_rows(num_tokens: int, seq_len: int, extra: int = 1) -> int:
    """How many packed rows of ``seq_len + extra`` tokens (stride ``seq_len``) a stream holds."""
    return max(0, (num_tokens - extra) // seq_len)


class PackedDataset:
    """Fixed-length rows of a token stream, served in a per-epoch shuffled order.

    The position is exact: ``state_dict()`` holds the epoch, the row cursor within the epoch's
    permutation and the seed, so ``load_state_dict`` continues with the very next row, whatever
    batch sizes were used before. ``step`` counts the batches started in the current epoch (a
    batch that runs past the end of an epoch finishes with the first rows of the next one).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, extra: int = 1, seed: int = 0) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if extra < 1:
            raise ValueError(f"extra must be >= 1 (the next-token target), got {extra}")
        if not isinstance(tokens, np.ndarray):
            tokens = np.asarray(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be a 1-D token stream, got shape {tokens.shape}")
        self.tokens, self.seq_len, self.extra, self.seed = tokens, seq_len, extra, int(seed)
        self.num_rows = num_rows(tokens.shape[0], seq_len, extra)
        if self.num_rows == 0:
            raise ValueError(f"{tokens.shape[0]} tokens are too few for one row of {seq_len + extra}")
        self.epoch = 0
        self.step = 0
        self.row = 0
        self._perm: np.ndarray | None = None
        self._perm_epoch = -1

    @property
    def row_length(self) -> int:
        return self.seq_len + self.extra

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            self._perm = np.random.default_rng(self.seed + self.epoch).permutation(self.num_rows)
            self._perm_epoch = self.epoch
        return self._perm

    def rows(self, indices: np.ndarray | Sequence[int]) -> torch.Tensor:
        """The rows with the given indices, as a ``[len(indices), seq_len + extra]`` int64 tensor."""
        idx = np.asarray(indices, dtype=np.int64)
        offsets = idx[:, None] * self.seq_len + np.arange(self.row_length)[None, :]  # [B, L]
        return torch.from_numpy(np.asarray(self.tokens[offsets], dtype=np.int64))

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """The next ``batch_size`` rows: a ``[batch_size, seq_len + extra]`` LongTensor."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        picked: list[np.ndarray] = []
        need = batch_size
        self.step += 1
        while need > 0:
            perm = self._permutation()
            take = perm[self.row : self.row + need]
            picked.append(take)
            need -= take.shape[0]
            self.row += take.shape[0]
            if self.row == self.num_rows:
                self.epoch, self.row = self.epoch + 1, 0
                self.step = 1 if need > 0 else 0
        return self.rows(np.concatenate(picked))

    def iter_sequential(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Every row once, in stream order (for evaluation); the last batch may be smaller."""
        for start in range(0, self.num_rows, batch_size):
            yield self.rows(np.arange(start, min(start + batch_size, self.num_rows)))

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "step": self.step, "row": self.row,
                "num_rows": self.num_rows, "seq_len": self.seq_len, "extra": self.extra}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for name in ("seq_len", "extra", "num_rows"):
            if name in state and int(state[name]) != getattr(self, name):
                raise ValueError(f"data state was saved with {name}={state[name]}, this dataset has "
                                 f"{name}={getattr(self, name)}: resuming would not continue the same stream")
        row = int(state.get("row", 0))
        if not 0 <= row < self.num_rows:
            raise ValueError(f"data state row {row} is outside [0, {self.num_rows})")
        self.seed, self.epoch, self.step, self.row = int(state["seed"]), int(state["epoch"]), int(state["step"]), row
        self._perm_epoch = -1
