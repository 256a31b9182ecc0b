"""Training data: stdlib corpus listing, held-out rule, token cache, packed batches and exact resume."""

from __future__ import annotations

import os
import shutil
import sysconfig

import numpy as np
import pytest
import torch

from mimo.tokenizer import Tokenizer, train_bpe
from mimo.training import data
from mimo.training.data import (
    PackedDataset,
    build_token_cache,
    cache_key,
    is_heldout,
    num_rows,
    split_files,
    stdlib_files,
)

_FILES = ("abc.py", "bisect.py", "keyword.py")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    lib = sysconfig.get_paths()["stdlib"]
    texts = []
    for name in _FILES:
        with open(os.path.join(lib, name), encoding="utf-8") as f:
            texts.append(f.read())
    return Tokenizer(train_bpe(texts, 400))


@pytest.fixture()
def corpus(tmp_path) -> list[tuple[str, str]]:
    """A copy of three small stdlib files plus one that mentions special tokens, as a corpus."""
    lib = sysconfig.get_paths()["stdlib"]
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    for name in _FILES:
        shutil.copy(os.path.join(lib, name), root / "pkg" / name)
    (root / "special.py").write_text('END = "<|endoftext|>"  # also <think> — 世界\n', encoding="utf-8")
    return stdlib_files(str(root))


def test_stdlib_listing() -> None:
    files = stdlib_files()
    rels = [r for r, _ in files]
    assert rels == sorted(rels) and len(rels) > 100
    assert {"os.py", "json/decoder.py", "collections/__init__.py"} <= set(rels)
    for rel, path in files:
        parts = rel.split("/")
        assert rel.endswith(".py") and "\\" not in rel and os.path.isabs(path)
        assert not set(parts[:-1]) & {"test", "tests", "idle_test", "site-packages"}, rel


def test_listing_filters(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    for rel, body in {
        "a.py": b"x = 1\n", "sub/b.py": b"y = 2\n", "notes.txt": b"no",
        "test/t.py": b"", "pkg/tests/t.py": b"", "idlelib/idle_test/t.py": b"", "site-packages/s.py": b"",
        "latin1.py": "é = 1\n".encode("latin-1"), "big.py": b"#" * 200,
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(body)
    monkeypatch.setattr(data, "MAX_FILE_BYTES", 100)
    assert [r for r, _ in stdlib_files(str(tmp_path))] == ["a.py", "sub/b.py"]
    with pytest.raises(FileNotFoundError):
        stdlib_files(str(tmp_path / "nope"))


def test_heldout_rule_is_pinned() -> None:
    # Pinned decisions: changing the rule would silently move files between train and held-out.
    assert is_heldout("decimal.py") and is_heldout("re/_compiler.py")
    assert not is_heldout("os.py") and not is_heldout("json/decoder.py")
    assert not is_heldout("decimal.py", heldout_percent=0) and is_heldout("os.py", heldout_percent=100)
    files = [(r, "/x/" + r) for r in ("os.py", "decimal.py", "json/decoder.py", "re/_compiler.py")]
    train, heldout = split_files(files)
    assert train == [files[0], files[2]] and heldout == [files[1], files[3]]
    with pytest.raises(ValueError):
        split_files(files, heldout_percent=101)


def test_stdlib_split_is_about_two_percent() -> None:
    train, heldout = split_files(stdlib_files())
    total = len(train) + len(heldout)
    assert 0 < len(heldout) < 0.05 * total
    assert not {r for r, _ in train} & {r for r, _ in heldout}


def test_token_cache(tok: Tokenizer, corpus, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    tokens = build_token_cache(tok, corpus, cache)
    assert tokens.dtype == np.uint16 and tokens.ndim == 1
    eot = tok.eos_token_id
    # One <|endoftext|> after each document, and none inside: special-token text in a file stays text.
    ends = np.flatnonzero(np.asarray(tokens) == eot)
    assert len(ends) == len(corpus) and ends[-1] == len(tokens) - 1
    starts = np.concatenate([[0], ends[:-1] + 1])
    for (_, path), s, e in zip(corpus, starts, ends):
        with open(path, encoding="utf-8") as f:
            assert tok.decode(tokens[s:e]) == f.read()
    assert not set(np.asarray(tokens).tolist()) & (tok.special_token_ids - {eot})
    assert len(list(cache.glob("tokens-*.npy"))) == 1 and not list(cache.glob(".tmp-*"))

    # A second build reads the cache instead of tokenizing.
    def boom(*args, **kwargs):
        raise AssertionError("cache miss")

    monkeypatch.setattr(data, "tokenize_documents", boom)
    np.testing.assert_array_equal(build_token_cache(tok, corpus, cache), tokens)
    monkeypatch.undo()

    # Changing one file's bytes changes the key, so the stale stream is never returned.
    key = cache_key(tok, corpus)
    with open(corpus[0][1], "a", encoding="utf-8") as f:
        f.write("\nz = 3\n")
    assert cache_key(tok, corpus) != key
    changed = build_token_cache(tok, corpus, cache)
    assert len(changed) > len(tokens) and len(list(cache.glob("tokens-*.npy"))) == 2
    # So do a different tokenizer and a different file list.
    other = Tokenizer(train_bpe(["def f(): pass\n"] * 3, 300))
    assert cache_key(other, corpus) != cache_key(tok, corpus)
    assert cache_key(tok, corpus[1:]) != cache_key(tok, corpus)


def _stream(n: int = 1000) -> np.ndarray:
    return np.arange(n, dtype=np.uint16)


def test_rows_layout() -> None:
    ds = PackedDataset(_stream(), seq_len=16, extra=4, seed=0)
    assert ds.num_rows == num_rows(1000, 16, 4) == (1000 - 4) // 16
    rows = ds.rows([0, 3, ds.num_rows - 1])
    assert rows.dtype == torch.long and rows.shape == (3, 20)
    assert rows[1].tolist() == list(range(48, 68))  # stride seq_len, length seq_len + extra
    assert rows[2, -1].item() <= 999
    seq = torch.cat(list(ds.iter_sequential(7)))
    assert torch.equal(seq, ds.rows(np.arange(ds.num_rows)))
    with pytest.raises(ValueError, match="too few"):
        PackedDataset(_stream(10), seq_len=16)
    with pytest.raises(ValueError, match="extra"):
        PackedDataset(_stream(), seq_len=16, extra=0)


def test_epochs_cover_every_row_once() -> None:
    ds = PackedDataset(_stream(), seq_len=10, extra=1, seed=3)
    n = ds.num_rows
    assert n % 10 != 0
    first = torch.cat([ds.next_batch(10) for _ in range(n // 10)] + [ds.next_batch(n % 10)])
    assert ds.state_dict()["epoch"] == 1 and ds.state_dict()["row"] == 0
    assert sorted((first[:, 0] // 10).tolist()) == list(range(n))
    second = torch.cat([ds.next_batch(n)])
    assert not torch.equal(first, second)  # reshuffled per epoch
    again = PackedDataset(_stream(), seq_len=10, extra=1, seed=3)
    assert torch.equal(again.next_batch(n), first)
    assert not torch.equal(PackedDataset(_stream(), seq_len=10, seed=4).next_batch(n), first)


def test_resume_gives_identical_batches() -> None:
    sizes = [5, 8, 3, 13, 8, 8, 21, 2, 8, 8, 30, 64, 99, 7]  # 284 rows: crosses two epoch ends (99 rows each)
    ref = PackedDataset(_stream(), seq_len=10, extra=3, seed=11)
    expected = [ref.next_batch(b) for b in sizes]
    for cut in (1, 4, 7, 11, 12):
        a = PackedDataset(_stream(), seq_len=10, extra=3, seed=11)
        for b in sizes[:cut]:
            a.next_batch(b)
        state = a.state_dict()
        b_ds = PackedDataset(_stream(), seq_len=10, extra=3, seed=0)
        b_ds.load_state_dict(dict(state))
        assert b_ds.state_dict() == state
        assert state["epoch"] == (sum(sizes[:cut]) // 99)
        for b, exp in zip(sizes[cut:], expected[cut:]):
            assert torch.equal(b_ds.next_batch(b), exp)
    with pytest.raises(ValueError, match="seq_len"):
        PackedDataset(_stream(), seq_len=12, extra=3).load_state_dict(ref.state_dict())


def test_token_cache_without_progress_prints_no_bar(tok: Tokenizer, corpus, tmp_path, capsys) -> None:
    """``mimo train --no-progress`` means no bar at all, the tokenizing one included."""
    build_token_cache(tok, corpus, tmp_path / "cache", progress=False)
    assert "tokenizing" not in capsys.readouterr().err
    build_token_cache(tok, corpus, tmp_path / "cache2")
    assert "tokenizing" in capsys.readouterr().err
