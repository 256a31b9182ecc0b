"""The arithmetic domain: multi-digit word problems answered after a ``<think>`` scratchpad of worked steps.

Families are problem templates (the operations they chain and the story they tell). The held-out families
chain operations the training families teach, in combinations and stories never trained on. Numbers
have 2 to 4 digits; every intermediate result is a non-negative integer and divisions are exact.

The scratchpad works each operation the way it is done by hand, digit by digit, so a small model can
learn the procedure rather than the result: column addition with carries, column subtraction with
borrows, multiplication as one partial product per digit of the multiplier then their sum, long
division one digit of the quotient at a time. The reference answer is the assistant message
``{"reasoning_content": STEPS, "content": SENTENCE + "\\nAnswer: N"}``, rendered with thinking on.

Metric, :func:`score`: exact answer. The answer is the integer on the last line of the answer text
(after ``</think>``) of the form ``Answer: N`` (commas allowed as thousands separators); 1.0 when it
equals the reference, else 0.0 (no such line is 0).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from typing import Any

from mimo.posttrain.domains.common import answer_text

__all__ = ["FAMILIES", "HELDOUT", "extract_answer", "generate", "score"]

_NAMES = ("Ana", "Bo", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Juno", "Kofi", "Lena", "Mira", "Noor")
_ITEMS = ("apples", "bolts", "books", "cards", "coins", "eggs", "marbles", "pencils", "stamps", "tiles", "tickets")
_PLACES = ("warehouse", "library", "shop", "farm", "school", "depot")


def _digits(n: int) -> list[int]:
    return [int(c) for c in str(n)][::-1]  # least significant first


def add_steps(a: int, b: int) -> list[str]:
    lines = [f"Add {a} + {b} column by column, from the ones:"]
    da, db, carry, out = _digits(a), _digits(b), 0, []
    for i in range(max(len(da), len(db))):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        s = x + y + carry
        carry_text = f" + carry {carry}" if carry else ""
        lines.append(f"  {x} + {y}{carry_text} = {s}, write {s % 10}" + (", carry 1" if s >= 10 else ""))
        out.append(s % 10)
        carry = s // 10
    if carry:
        lines.append("  write the last carry 1")
    lines.append(f"So {a} + {b} = {a + b}.")
    return lines


def sub_steps(a: int, b: int) -> list[str]:
    lines = [f"Subtract {a} - {b} column by column, from the ones:"]
    da, db, borrow = _digits(a), _digits(b), 0
    for i in range(len(da)):
        x, y = da[i] - borrow, (db[i] if i < len(db) else 0)
        shown = f"{da[i]} - borrow 1" if borrow else f"{da[i]}"
        if x < y:
            lines.append(f"  {shown} is less than {y}: borrow 1, {x + 10} - {y} = {x + 10 - y}")
            borrow = 1
        else:
            lines.append(f"  {shown} - {y} = {x - y}")
            borrow = 0
    lines.append(f"So {a} - {b} = {a - b}.")
    return lines


def mul_steps(a: int, b: int) -> list[str]:
    lines = [f"Multiply {a} × {b}: one partial product per digit of {b}."]
    partials = []
    for i, d in enumerate(_digits(b)):
        p = a * d * 10 ** i
        place = 10 ** i
        lines.append(f"  {a} × {d * place} = {p}" if place > 1 else f"  {a} × {d} = {p}")
        partials.append(p)
    if len(partials) > 1:
        total = partials[0]
        for p in partials[1:]:
            lines.append(f"  {total} + {p} = {total + p}")
            total += p
    lines.append(f"So {a} × {b} = {a * b}.")
    return lines


def div_steps(a: int, b: int) -> list[str]:
    lines = [f"Divide {a} ÷ {b} by long division:"]
    rem, q = 0, ""
    for c in str(a):
        cur = rem * 10 + int(c)
        d = cur // b
        rem = cur - d * b
        if q or d:
            lines.append(f"  {cur} ÷ {b} = {d}, remainder {rem}")
        q += str(d)
    lines.append(f"So {a} ÷ {b} = {a // b}.")
    return lines


Problem = tuple[str, list[str], int, str]  # question, steps, answer, sentence


def _who(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice(_PLACES)


def _sum_two(rng: random.Random) -> Problem:
    who, item, place = _who(rng)
    a, b = rng.randint(100, 9999), rng.randint(100, 9999)
    q = f"The {place} had {a} {item}. {who} brought {b} more. How many {item} does the {place} have now?"
    return q, add_steps(a, b), a + b, f"The {place} now has {a + b} {item}."


def _difference(rng: random.Random) -> Problem:
    who, item, place = _who(rng)
    a = rng.randint(1000, 9999)
    b = rng.randint(100, a - 1)
    q = f"{who} had {a} {item} and gave away {b}. How many {item} are left?"
    return q, sub_steps(a, b), a - b, f"{who} has {a - b} {item} left."


def _product(rng: random.Random) -> Problem:
    who, item, _ = _who(rng)
    a, b = rng.randint(12, 999), rng.randint(12, 99)
    q = f"{who} packs {b} boxes with {a} {item} in each box. How many {item} is that in total?"
    return q, mul_steps(a, b), a * b, f"That is {a * b} {item}."


def _quotient(rng: random.Random) -> Problem:
    who, item, _ = _who(rng)
    b, answer = rng.randint(3, 48), rng.randint(12, 999)
    a = b * answer
    q = f"{who} shares {a} {item} equally among {b} friends. How many {item} does each friend get?"
    return q, div_steps(a, b), answer, f"Each friend gets {answer} {item}."


def _sum_then_times(rng: random.Random) -> Problem:
    who, item, _ = _who(rng)
    a, b, c = rng.randint(10, 999), rng.randint(10, 999), rng.randint(2, 48)
    q = (f"Each crate holds {a} red {item} and {b} blue {item}. {who} has {c} crates. "
         f"How many {item} are there altogether?")
    steps = ["First the number per crate.", *add_steps(a, b), "Then times the number of crates.", *mul_steps(a + b, c)]
    return q, steps, (a + b) * c, f"There are {(a + b) * c} {item} altogether."


def _total_cost(rng: random.Random) -> Problem:
    who, item, _ = _who(rng)
    n, price, fee = rng.randint(3, 99), rng.randint(12, 999), rng.randint(10, 999)
    q = f"{who} buys {n} {item} at {price} cents each and pays a {fee} cent delivery fee. What is the total in cents?"
    steps = ["First the price of the items.", *mul_steps(price, n), "Then add the fee.", *add_steps(price * n, fee)]
    total = price * n + fee
    return q, steps, total, f"The total is {total} cents."


def _remaining_after_two(rng: random.Random) -> Problem:
    who, item, place = _who(rng)
    a = rng.randint(2000, 9999)
    b = rng.randint(100, a // 2)
    c = rng.randint(100, a - b - 1)
    q = (f"A {place} stocked {a} {item}. It sold {b} on Monday and {c} on Tuesday. "
         f"How many {item} remain?")
    steps = ["First subtract Monday's sales.", *sub_steps(a, b), "Then subtract Tuesday's sales.", *sub_steps(a - b, c)]
    return q, steps, a - b - c, f"{a - b - c} {item} remain."


def _product_minus(rng: random.Random) -> Problem:
    who, item, _ = _who(rng)
    a, b = rng.randint(12, 999), rng.randint(12, 99)
    c = rng.randint(10, a * b - 1)
    q = (f"{who} made {b} bags of {a} {item} each, then {c} {item} were lost. "
         f"How many {item} are left?")
    steps = ["First the number made.", *mul_steps(a, b), "Then subtract the lost ones.", *sub_steps(a * b, c)]
    return q, steps, a * b - c, f"{a * b - c} {item} are left."


def _average_three(rng: random.Random) -> Problem:
    who, item, _ = _who(rng)
    x, y = rng.randint(100, 999), rng.randint(100, 999)
    z = rng.randint(100, 999)
    z += (-(x + y + z)) % 3  # make the sum divisible by 3
    q = (f"{who} counted {x}, {y} and {z} {item} on three days. "
         f"What is the average number of {item} per day?")
    steps = ["First the total.", *add_steps(x, y), *add_steps(x + y, z), "Then divide by 3.", *div_steps(x + y + z, 3)]
    avg = (x + y + z) // 3
    return q, steps, avg, f"The average is {avg} {item} per day."


FAMILIES: dict[str, Callable[[random.Random], Problem]] = {
    "sum_two": _sum_two,
    "difference": _difference,
    "product": _product,
    "quotient": _quotient,
    "sum_then_times": _sum_then_times,
    "total_cost": _total_cost,
    "remaining_after_two": _remaining_after_two,
    "product_minus": _product_minus,
    "average_three": _average_three,
}
HELDOUT = ("remaining_after_two", "product_minus", "average_three")


def generate(family: str, index: int, rng: random.Random) -> dict[str, Any]:
    question, steps, answer, sentence = FAMILIES[family](rng)
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "reasoning_content": "\n".join(steps), "content": f"{sentence}\nAnswer: {answer}"},
        ],
        "chat_template_kwargs": {"enable_thinking": True},
        "reference": {"answer": answer},
    }


_ANSWER = re.compile(r"^\s*Answer:\s*(-?\d[\d,]*)\s*$")


def extract_answer(text: str) -> int | None:
    """The integer of the last ``Answer: N`` line of the answer text, or None."""
    for line in reversed(answer_text(text).splitlines()):  # answer_text: the scratchpad does not count
        m = _ANSWER.match(line)
        if m:
            return int(m.group(1).replace(",", ""))
    return None


def score(example: Mapping[str, Any], completion: Any) -> float:
    """Exact answer: 1.0 when the extracted answer equals the reference (see the module docstring)."""
    got = extract_answer(answer_text(completion))  # a message dict -> its content
    return 1.0 if got is not None and got == example["reference"]["answer"] else 0.0
