"""Synthetic Python that can only be predicted by copying from earlier in the file (pre-training data).

A tool call copies a function's name from a tool list and argument values from the request; mimo-nano, trained
on 5.3M tokens of the standard library, cannot even finish a made-up function name defined three lines up
(``scripts/copy_probe.py``: 0/12). Real code repeats identifiers too, but rarely ones the model could not
guess; these files are made of names built from random syllables, so every later mention must be copied:

- **definitions and uses**: made-up functions and constants, defined, then called and read further down,
  between unrelated statements;
- **lookups**: a table of made-up keys with values, then ``assert TABLE["key"] == value`` lines (find the key,
  copy what follows it);
- **reverse lookups**: a registry of names with one-line descriptions, then comments that quote a description
  and the name that goes with it (find the description, copy what *precedes* it: a tool list's shape, where the
  name comes before the description the request paraphrases).

Digits are drawn freely, so numbers are copied too. Everything comes from ``random.Random(seed)``: the same
seed writes the same files.
"""

from __future__ import annotations

import os
import random

__all__ = ["Query", "lookup_section", "made_up_word", "reverse_lookup_section", "synthetic_file", "write_synthetic_corpus"]

_ONSETS = ("b", "br", "d", "dr", "f", "fl", "g", "gr", "k", "kl", "m", "n", "p", "pl", "qu", "r", "s", "sn", "st",
           "t", "tr", "v", "w", "z", "zh")
_VOWELS = ("a", "e", "i", "o", "u", "ee", "oo", "ai", "ou")
_CODAS = ("", "b", "k", "l", "m", "n", "p", "r", "rt", "sk", "t", "x", "z", "nd", "lk")
_VERBS = ("get", "set", "load", "save", "parse", "build", "check", "count", "merge", "scan", "fetch", "sort", "open",
          "close", "find", "make", "read", "write", "send", "split")
_NOUNS = ("items", "rows", "state", "config", "index", "total", "limit", "records", "names", "path", "values",
          "buffer", "table", "queue", "report")


def made_up_word(rng: random.Random, syllables: int | None = None) -> str:
    """A pronounceable made-up word of ``syllables`` (default 2-3) syllables: no model has seen it before."""
    n = syllables or rng.randint(2, 3)
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n))


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = f"{rng.choice(_VERBS)}_{made_up_word(rng)}_{rng.choice(_NOUNS)}"
        if name not in taken:
            taken.add(name)
            return name


def _value(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return str(rng.randint(0, 10 ** rng.randint(1, 6)))
    if kind < 0.6:
        return f"{rng.uniform(0, 1000):.{rng.randint(1, 3)}f}"
    return repr(f"{made_up_word(rng)}-{rng.randint(0, 999)}")


def _filler(rng: random.Random, names: list[str]) -> str:
    """An unrelated statement (sometimes mentioning an earlier name, which must then be copied too)."""
    a, b = made_up_word(rng, 2), made_up_word(rng, 2)
    options = [f"{a} = {rng.randint(0, 9999)}", f"{a}_{b} = [{a} for {a} in range({rng.randint(2, 64)})]",
               f"if {a} > {rng.randint(0, 99)}:\n    {b} = {a} * {rng.randint(2, 9)}",
               f"for {a} in range({rng.randint(1, 30)}):\n    total += {a}",
               f"log.debug({repr(made_up_word(rng) + ' ' + made_up_word(rng))})"]
    if names:
        options.append(f"result = {rng.choice(names)}({a})")
    return rng.choice(options)


def _definitions(rng: random.Random) -> str:
    taken: set[str] = set()
    funcs = [_name(rng, taken) for _ in range(rng.randint(3, 6))]
    consts = [f"{made_up_word(rng).upper()}_{rng.choice(_NOUNS).upper()}" for _ in range(rng.randint(2, 4))]
    lines = []
    for c in consts:
        lines.append(f"{c} = {_value(rng)}")
    lines.append("")
    for f in funcs:
        arg = rng.choice(_NOUNS)
        lines += [f"def {f}({arg}, {made_up_word(rng, 2)}=None):", f'    """{f.replace("_", " ").capitalize()}."""',
                  f"    return len({arg}) + {rng.choice(consts)}" if rng.random() < 0.5 else f"    return {arg}", ""]
    for _ in range(rng.randint(8, 30)):
        r = rng.random()
        if r < 0.35:
            lines.append(f"{made_up_word(rng, 2)} = {rng.choice(funcs)}({rng.choice(consts)})")
        elif r < 0.5:
            lines.append(f"assert {rng.choice(consts)} is not None")
        else:
            lines.append(_filler(rng, funcs))
    return "\n".join(lines) + "\n"


Query = tuple[int, str, list[str]]
"""Where a lookup section asks: (character offset of the answer in the section's text, the answer, the answers the
section offers to choose from)."""


def lookup_section(rng: random.Random) -> tuple[str, list[Query]]:
    """A table of made-up keys with values, then ``assert TABLE["key"] == value`` lines (find the key, copy what
    follows it): the text and its queries."""
    table = made_up_word(rng).upper() + "_TABLE"
    keys = list(dict.fromkeys(made_up_word(rng) for _ in range(rng.randint(4, 12))))
    values = {k: _value(rng) for k in keys}
    lines = [f"{table} = {{"] + [f"    {k!r}: {v}," for k, v in values.items()] + ["}", ""]
    choices = list(dict.fromkeys(values.values()))
    queries: list[tuple[int, str]] = []  # (line index, answer)
    for _ in range(rng.randint(4, 16)):
        if rng.random() < 0.3:
            lines.append(_filler(rng, []))
        k = rng.choice(keys)
        queries.append((len(lines), values[k]))
        lines.append(f"assert {table}[{k!r}] == {values[k]}")
    return _joined(lines, queries, choices)


def reverse_lookup_section(rng: random.Random) -> tuple[str, list[Query]]:
    """A registry of made-up names with one-line descriptions, then comments that quote a description and the name
    that goes with it (find the description, copy what *precedes* it): the text and its queries."""
    taken: set[str] = set()
    names = [_name(rng, taken) for _ in range(rng.randint(3, 8))]
    about = {n: f"{rng.choice(_VERBS).capitalize()} the {made_up_word(rng)} {rng.choice(_NOUNS)} of a {made_up_word(rng)}"
             for n in names}
    lines = ["REGISTRY = ["] + [f"    ({n!r}, {about[n]!r})," for n in names] + ["]", ""]
    queries: list[tuple[int, str]] = []
    for _ in range(rng.randint(3, 10)):
        if rng.random() < 0.3:
            lines.append(_filler(rng, []))
        n = rng.choice(names)
        lines.append(f"# {about[n]}:")
        queries.append((len(lines), n))
        lines.append(f"handler = REGISTRY_FUNCS[{n!r}]")
    return _joined(lines, queries, names)


def _joined(lines: list[str], queries: list[tuple[int, str]], choices: list[str]) -> tuple[str, list[Query]]:
    """The section's text, and each query's answer located in it: the last occurrence of the answer on its line."""
    starts, at = [], 0
    for line in lines:
        starts.append(at)
        at += len(line) + 1
    return "\n".join(lines) + "\n", [(starts[i] + lines[i].rindex(answer), answer, choices) for i, answer in queries]


def _lookups(rng: random.Random) -> str:
    return lookup_section(rng)[0]


def _reverse_lookups(rng: random.Random) -> str:
    return reverse_lookup_section(rng)[0]


def synthetic_file(rng: random.Random) -> str:
    """One file: a few sections of the three kinds, in random order."""
    kinds = (_definitions, _lookups, _reverse_lookups)
    return "\n\n".join(rng.choice(kinds)(rng) for _ in range(rng.randint(2, 5)))


def write_synthetic_corpus(out_dir: str | os.PathLike[str], files: int, seed: int = 0) -> int:
    """Write ``files`` synthetic ``.py`` files under ``out_dir`` (``synth_00000.py`` ...); return their bytes."""
    if files < 1:
        raise ValueError(f"files must be >= 1, got {files}")
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    total = 0
    for i in range(files):
        text = synthetic_file(rng)
        with open(os.path.join(out_dir, f"synth_{i:05d}.py"), "w", encoding="utf-8") as f:
            f.write(text)
        total += len(text.encode("utf-8"))
    return total
