"""The code domain: small function-writing tasks with unit tests, from generators grouped in families.

A task is a description, a function name and signature, a reference solution (source we wrote) and
``assert`` tests. Each family has several task kinds, each with a random parameter (a threshold, a
character, a multiplier...), so one kind yields many distinct tasks. Test inputs are sampled; expected
outputs come from executing the *reference* source in-process (it is ours, trusted) and are written as
``repr`` literals, so the tests are plain Python the sandbox runs. Held-out families are never trained.

Metric, :func:`score`: pass@1. The answer's code is the last fenced code block of the answer text (after
``</think>``; the whole text when there is no fence); it runs with the task's tests in
:func:`mimo.posttrain.sandbox.run`; 1.0 when every test passes, else 0.0.
"""

from __future__ import annotations

import random
import re
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from mimo.posttrain.domains.common import answer_text

__all__ = ["FAMILIES", "HELDOUT", "extract_code", "generate", "score"]

_WORDS = ("alpha", "beta", "gamma", "delta", "kiwi", "lemon", "mango", "tree", "sky", "Sun", "moon", "Rock")
Task = tuple[str, str, str, Callable[[random.Random], tuple]]  # description, signature, body, input sampler


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 5)))


def _ints(rng: random.Random) -> list[int]:
    return [rng.randint(-20, 50) for _ in range(rng.randint(0, 8))]


def _string_transform(rng: random.Random) -> Task:
    k = rng.randint(2, 4)
    c1, c2 = rng.sample("aeiost", 2)
    return rng.choice([
        ("returns the words of `s` in reverse order, joined by single spaces", "s: str",
         "return ' '.join(s.split()[::-1])", lambda r: (_text(r),)),
        (f"returns `s` with every {k}-th character (the {k}-th, {2 * k}-th, ...) upper-cased", "s: str",
         f"return ''.join(ch.upper() if (i + 1) % {k} == 0 else ch for i, ch in enumerate(s))", lambda r: (_text(r),)),
        (f"returns `s` with every '{c1}' replaced by '{c2}'", "s: str", f"return s.replace({c1!r}, {c2!r})",
         lambda r: (_text(r),)),
        ("returns `s` without its vowels (a, e, i, o, u, either case)", "s: str",
         "return ''.join(ch for ch in s if ch.lower() not in 'aeiou')", lambda r: (_text(r),)),
        (f"returns `s` with each character repeated {k} times", "s: str", f"return ''.join(ch * {k} for ch in s)",
         lambda r: (_text(r)[:12],)),
    ])


def _list_reduce(rng: random.Random) -> Task:
    k = rng.randint(2, 9)
    return rng.choice([
        (f"returns the sum of the elements of `xs` greater than {k}", "xs: list[int]",
         f"return sum(x for x in xs if x > {k})", lambda r: (_ints(r),)),
        (f"returns how many elements of `xs` are divisible by {k}", "xs: list[int]",
         f"return sum(1 for x in xs if x % {k} == 0)", lambda r: (_ints(r),)),
        ("returns the largest element of `xs` minus the smallest, or 0 for an empty list", "xs: list[int]",
         "return max(xs) - min(xs) if xs else 0", lambda r: (_ints(r),)),
        ("returns the sum of the squares of the elements of `xs`", "xs: list[int]",
         "return sum(x * x for x in xs)", lambda r: (_ints(r),)),
    ])


def _list_transform(rng: random.Random) -> Task:
    k = rng.randint(2, 9)
    return rng.choice([
        (f"returns a new list with every element of `xs` multiplied by {k}", "xs: list[int]",
         f"return [x * {k} for x in xs]", lambda r: (_ints(r),)),
        ("returns the even elements of `xs`, in order", "xs: list[int]", "return [x for x in xs if x % 2 == 0]",
         lambda r: (_ints(r),)),
        ("returns the running sums of `xs` (element i is xs[0] + ... + xs[i])", "xs: list[int]",
         "out, total = [], 0\nfor x in xs:\n    total += x\n    out.append(total)\nreturn out", lambda r: (_ints(r),)),
        ("returns the differences between neighbours of `xs` (xs[i + 1] - xs[i])", "xs: list[int]",
         "return [b - a for a, b in zip(xs, xs[1:])]", lambda r: (_ints(r),)),
    ])


def _number_fn(rng: random.Random) -> Task:
    m = rng.randint(5, 97)
    return rng.choice([
        ("returns the sum of the decimal digits of the non-negative integer `n`", "n: int",
         "return sum(int(d) for d in str(n))", lambda r: (r.randint(0, 10 ** 6),)),
        ("returns the non-negative integer `n` with its decimal digits reversed (leading zeros dropped)", "n: int",
         "return int(str(n)[::-1])", lambda r: (r.randint(0, 10 ** 6),)),
        ("returns the n-th triangular number 1 + 2 + ... + n (0 for n = 0)", "n: int",
         "return n * (n + 1) // 2", lambda r: (r.randint(0, 500),)),
        (f"returns `a` to the power `b`, modulo {m}", "a: int, b: int", f"return pow(a, b, {m})",
         lambda r: (r.randint(0, 100), r.randint(0, 30))),
    ])


def _string_count(rng: random.Random) -> Task:
    c = rng.choice("aeimot")
    return rng.choice([
        (f"returns how many times the character '{c}' occurs in `s`", "s: str", f"return s.count({c!r})",
         lambda r: (_text(r),)),
        ("returns the number of words (separated by whitespace) in `s`", "s: str", "return len(s.split())",
         lambda r: (_text(r),)),
        ("returns the number of upper-case letters in `s`", "s: str", "return sum(1 for ch in s if ch.isupper())",
         lambda r: (_text(r),)),
        ("returns the length of the longest word of `s`, or 0 when it has none", "s: str",
         "return max((len(w) for w in s.split()), default=0)", lambda r: (_text(r),)),
    ])


def _dict_ops(rng: random.Random) -> Task:
    return rng.choice([
        ("returns a dict mapping each word of `s` to how many times it occurs, in order of first occurrence",
         "s: str", "out = {}\nfor w in s.split():\n    out[w] = out.get(w, 0) + 1\nreturn out", lambda r: (_text(r),)),
        ("returns a dict mapping each element of `xs` to its first index in `xs`", "xs: list[int]",
         "out = {}\nfor i, x in enumerate(xs):\n    out.setdefault(x, i)\nreturn out",
         lambda r: ([r.randint(0, 6) for _ in range(r.randint(0, 8))],)),
        ("returns the word of `s` that occurs most often (the first such word on a tie), or '' for an empty `s`",
         "s: str", "words = s.split()\nreturn max(words, key=words.count) if words else ''", lambda r: (_text(r),)),
    ])


def _sequence_gen(rng: random.Random) -> Task:
    k = rng.randint(2, 9)
    return rng.choice([
        (f"returns the first `n` positive multiples of {k}", "n: int", f"return [{k} * i for i in range(1, n + 1)]",
         lambda r: (r.randint(0, 10),)),
        ("returns the first `n` Fibonacci numbers, starting 0, 1", "n: int",
         "out, a, b = [], 0, 1\nfor _ in range(n):\n    out.append(a)\n    a, b = b, a + b\nreturn out",
         lambda r: (r.randint(0, 15),)),
        ("returns how many steps of the Collatz map (n -> n / 2 if even, 3n + 1 if odd) take `n` >= 1 to 1",
         "n: int", "steps = 0\nwhile n != 1:\n    n = n // 2 if n % 2 == 0 else 3 * n + 1\n    steps += 1\nreturn steps",
         lambda r: (r.randint(1, 200),)),
    ])


FAMILIES: dict[str, Callable[[random.Random], Task]] = {
    "string_transform": _string_transform,
    "list_reduce": _list_reduce,
    "list_transform": _list_transform,
    "number_fn": _number_fn,
    "string_count": _string_count,
    "dict_ops": _dict_ops,
    "sequence_gen": _sequence_gen,
}
HELDOUT = ("string_count", "dict_ops", "sequence_gen")
_N_TESTS = 5


def generate(family: str, index: int, rng: random.Random) -> dict[str, Any]:
    description, signature, body, sample = FAMILIES[family](rng)
    name = f"solve_{index}"
    source = f"def {name}({signature}):\n{textwrap.indent(body, '    ')}\n"
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # our own reference: trusted; it gives the tests' expected values
    tests = []
    for _ in range(_N_TESTS):
        args = sample(rng)
        expected = namespace[name](*args)
        tests.append(f"assert {name}({', '.join(map(repr, args))}) == {expected!r}")
    question = (f"Write a Python function `{name}({signature})` that {description}. "
                "Answer with the function in a ```python code block.")
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"```python\n{source}```"},
        ],
        "reference": {"entry_point": name, "solution": source, "tests": "\n".join(tests) + "\n"},
    }


_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)```", re.S)


def extract_code(text: str) -> str:
    """The last fenced code block of the answer text, or the whole answer text when there is none."""
    text = answer_text(text)
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


def score(example: Mapping[str, Any], completion: Any, **sandbox: Any) -> float:
    """pass@1 of one answer: 1.0 when its code passes the task's tests in the sandbox (keyword arguments go
    to :func:`mimo.posttrain.sandbox.run`)."""
    from mimo.posttrain.sandbox import run

    return 1.0 if run(extract_code(answer_text(completion)), example["reference"]["tests"], **sandbox).passed else 0.0
