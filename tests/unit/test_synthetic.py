"""Synthetic copy-only pre-training files (mimo.training.synthetic)."""

import ast
import random
import re

import pytest

from mimo.training.synthetic import synthetic_file, write_synthetic_corpus


def test_files_are_python_and_a_function_of_the_seed(tmp_path):
    for seed in range(20):
        ast.parse(synthetic_file(random.Random(seed)))  # valid Python: the corpus is code
    a, b = tmp_path / "a", tmp_path / "b"
    size = write_synthetic_corpus(a, 5, seed=3)
    write_synthetic_corpus(b, 5, seed=3)
    assert size > 0 and sorted(p.name for p in a.iterdir()) == [f"synth_{i:05d}.py" for i in range(5)]
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in (p.name for p in a.iterdir()))
    assert (a / "synth_00000.py").read_text() != synthetic_file(random.Random(4))
    with pytest.raises(ValueError, match="files"):
        write_synthetic_corpus(tmp_path / "c", 0)


def test_every_later_mention_was_written_earlier():
    """What makes the files copy-only: each looked-up key and each registry name quoted below its table was in
    the table above it (a model must copy it, it cannot be guessed)."""
    for seed in range(30):
        text = synthetic_file(random.Random(seed))
        for table, key in re.findall(r"assert (\w+_TABLE)\[('\w+')\]", text):
            head = text[: text.index(f"assert {table}[{key}]")]
            assert f"    {key}:" in head
        for name in re.findall(r"REGISTRY_FUNCS\[('\w+')\]", text):
            head = text[: text.index(f"REGISTRY_FUNCS[{name}]")]
            assert f"({name}," in head
