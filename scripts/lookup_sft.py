"""Can training teach a model the lookup a tool choice needs? The two lookups in their smallest chat form, and the
reverse one as a corpus to pre-train on (#15).

``data`` writes chat examples: a user message lists a registry of made-up names, each with a few words the model
knows (one token each in its tokenizer), then asks ``Which name has: WORDS``; the assistant answers the name.
``--direction reverse`` writes the lines as ``NAME: WORDS`` (the name *precedes* the matched words, as a tool's
``<name>`` precedes the ``<description>`` a request repeats); ``--direction forward`` as ``WORDS: NAME`` (the name
*follows* them: the copying that induction does). Every registry is drawn fresh, so the answer cannot be memorised,
only looked up. ``train.jsonl`` is what ``mimo sft --data`` reads; ``heldout.jsonl`` (another seed) is what
``score`` reads.

``corpus`` writes the reverse lookup as plain text to pre-train on (``mimo train --init-from MODEL --data-root
OUT/train``): sections that list ``NAME: WORDS`` lines and then ask every name as ``? WORDS -> NAME``, and with
``--selfcopy F`` a fraction F of sections whose lines end by repeating their own name (``NAME: WORDS -> NAME``:
the look-back from the end of a description to the name that began its line, which the reverse lookup needs, under
the ordinary next-token loss); ``OUT/heldout_reverse.jsonl`` and ``OUT/heldout_selfcopy.jsonl`` hold held-out
questions of both kinds. ``--shape tools`` writes each reverse registry as the release's tool list does (a
``<function>`` block per name: ``<name>``, ``<description>`` with the words, a ``<parameters>`` block of 0-2
made-up parameters) instead of ``NAME: WORDS`` lines, and each self-copy registry likewise with descriptions that
end by repeating their tool's name (``<description>WORDS -> NAME</description>``); the questions stay ``? WORDS ->
NAME``.

``--code-fraction F`` copies real Python (the standard library's training split, whose held-out files ``mimo eval``
scores) into ``OUT/train/code`` until it is a fraction F of the training tokens, so that the lookup is learnt beside
the code the base models rather than over it (docs/POSTTRAINING.md, section 9).

``score`` renders each held-out question with the model's chat template and picks the offered name of highest
whole-name log-likelihood (as the server's tool grammar lets a model choose among names; a plain-text question
as it stands, the name after it); prints right against chance (the mean of 1 / names offered); ``--json-out``
writes the counts.

    .venv/bin/python scripts/lookup_sft.py data --out D --direction reverse
    .venv/bin/mimo sft --data D --from models/mimo-nano-chat-base --out RUN --steps 600 --batch-size 32 \\
        --max-len 256 --lr 5e-4 --dtype bf16 --checkpoint-interval 100
    .venv/bin/python scripts/lookup_sft.py score --model RUN/checkpoints/step-00000200/model \\
        --tokenizer models/mimo-nano-chat-base --data D/heldout.jsonl
    .venv/bin/python scripts/lookup_sft.py corpus --out C --selfcopy 0.5 --seed 1
    .venv/bin/mimo train --init-from models/mimo-nano-chat-base --data-root C/train --out RUN --steps 400 \\
        --batch-size 8 --seq-len 512 --lr 1e-3 --warmup 40 --dtype bf16 --checkpoint-interval 100
    .venv/bin/python scripts/lookup_sft.py score --model RUN/final --data C/heldout_reverse.jsonl

The reverse lookup is learnt in two stages, not in one (docs/POSTTRAINING.md, section 7): ``--selfcopy 0.5`` as
above, then ``corpus --out C2 --seed 2`` (reverse only) with ``mimo train --init-from RUN/final --data-root
C2/train``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import random
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mimo.training.synthetic import made_up_word  # noqa: E402


def vocabulary_words(tokenizer_dir: str) -> list[str]:
    """The lowercase words of three letters or more that the tokenizer has as one token each (with their leading
    space): words the model knows, so matching them is easy and only the direction of the lookup differs."""
    from mimo.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(tokenizer_dir)
    spelled = (tok.id_to_token(i) for i in range(tok.vocab_size))
    return sorted({t[1:] for t in spelled if t and re.fullmatch("\u0120[a-z]{3,}", t)})


def registry(rng: random.Random, entries: tuple[int, int], vocabulary: list[str]) -> tuple[list[str], list[str]]:
    """LO-HI (``entries``) distinct made-up names, and as many distinct strings of two to four ``vocabulary``
    words."""
    names: list[str] = []
    size = rng.randint(*entries)
    while len(names) < size:
        name = "_".join(made_up_word(rng, rng.randint(1, 2)) for _ in range(rng.randint(1, 2)))
        if name not in names:
            names.append(name)
    words: list[str] = []
    while len(words) < size:  # distinct, so each question has one right answer
        text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(2, 4)))
        if text not in words:
            words.append(text)
    return names, words


def registry_lines(names: list[str], words: list[str], repeat: bool = False) -> list[str]:
    """``NAME: WORDS`` lines (``NAME: WORDS -> NAME`` with ``repeat``): one spelling for the corpus and the questions
    held out from it."""
    return [f"{n}: {w} -> {n}" if repeat else f"{n}: {w}" for n, w in zip(names, words)]


_TYPES = ("string", "integer", "number", "boolean")


def tool_list(rng: random.Random, names: list[str], words: list[str], vocabulary: list[str],
              repeat: bool = False) -> list[str]:
    """The registry as the release's chat template lists tools: the name first, then the description (the words;
    ``WORDS -> NAME`` with ``repeat``) and 0-2 made-up parameters."""
    lines = ["<tools>"]
    for n, w in zip(names, words):
        described = f"{w} -> {n}" if repeat else w
        lines += ["<function>", f"<name>{n}</name>", f"<description>{described}</description>", "<parameters>"]
        params = rng.sample(vocabulary, rng.randint(0, 2))
        for p in params:
            lines += ["<parameter>", f"<name>{p}</name>", f"<type>{rng.choice(_TYPES)}</type>", "</parameter>"]
        lines += [f"<required>{json.dumps(params[:1])}</required>", "</parameters>", "</function>"]
    return lines + ["</tools>"]


def registry_text(rng: random.Random, names: list[str], words: list[str], shape: str, vocabulary: list[str],
                  repeat: bool = False) -> str:
    if shape == "tools":
        return "\n".join(tool_list(rng, names, words, vocabulary, repeat))
    return "\n".join(registry_lines(names, words, repeat))


def corpus_file(rng: random.Random, selfcopy: float, vocabulary: list[str], shape: str = "lines") -> str:
    """6-12 sections of plain text. A reverse section lists its registry (``NAME: WORDS`` lines, or a tool list
    with ``shape="tools"``), a blank line, then asks for every name in a shuffled order as ``? WORDS -> NAME``; a
    self-copy section (a ``selfcopy`` fraction) has lines that end by repeating their own name, ``NAME: WORDS ->
    NAME`` (with ``shape="tools"``, descriptions that do: ``<description>WORDS -> NAME</description>``), and asks
    nothing."""
    sections = []
    for _ in range(rng.randint(6, 12)):
        copies = rng.random() < selfcopy
        names, words = registry(rng, (2, 4), vocabulary)
        if copies:
            sections.append(registry_text(rng, names, words, shape, vocabulary, repeat=True) + "\n")
            continue
        order = list(range(len(names)))
        rng.shuffle(order)
        lines = [registry_text(rng, names, words, shape, vocabulary), ""] + [f"? {words[i]} -> {names[i]}" for i in order]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def text_question(rng: random.Random, kind: str, vocabulary: list[str], shape: str = "lines") -> dict:
    """A held-out plain-text question in the corpus's shape: ``reverse`` asks one name of a fresh registry
    (``? WORDS ->``); ``selfcopy`` ends on a line to be finished with its own name (``NAME: WORDS ->``; in the
    tool-list shape, on a description: ``<description>WORDS ->``)."""
    names, words = registry(rng, (2, 4), vocabulary)
    if kind == "reverse":
        asked = rng.randrange(len(names))
        prompt = registry_text(rng, names, words, shape, vocabulary) + f"\n\n? {words[asked]} ->"
    else:
        asked = len(names) - 1
        full = registry_text(rng, names, words, shape, vocabulary, repeat=True)  # cut before its last name
        prompt = full[: full.rindex(f"{words[-1]} -> {names[-1]}")] + f"{words[-1]} ->"
    return {"prompt": prompt, "choices": names, "answer": names[asked]}


def write_corpus(out: str, files: int, selfcopy: float, heldout: int, seed: int, vocabulary: list[str],
                 shape: str = "lines") -> None:
    """``out/train/t_NNNNN.py`` for ``mimo train --data-root``, and held-out questions of each kind."""
    os.makedirs(os.path.join(out, "train"), exist_ok=True)
    rng = random.Random(seed)
    for f in range(files):
        with open(os.path.join(out, "train", f"t_{f:05d}.py"), "w", encoding="utf-8") as fh:
            fh.write(corpus_file(rng, selfcopy, vocabulary, shape))
    for kind, offset in (("reverse", 1_000_003), ("selfcopy", 2_000_003)):
        rng = random.Random(seed + offset)
        with open(os.path.join(out, f"heldout_{kind}.jsonl"), "w", encoding="utf-8") as fh:
            for _ in range(heldout):
                fh.write(json.dumps(text_question(rng, kind, vocabulary, shape)) + "\n")


def add_code(out: str, fraction: float, seed: int, tokenizer_dir: str, code_root: str | None = None) -> tuple[int, int, int]:
    """Copy real Python into ``out/train/code/`` until it is ``fraction`` of the training tokens (the lookup files
    count as written), so that a run learns the lookup beside the code it already models instead of over it. Files
    come in a seeded random order from the training split of ``code_root`` (default this Python's standard library,
    whose held-out split is what ``mimo eval`` scores, so no scored file is copied). Returns (lookup tokens, code
    tokens, code files)."""
    from mimo.tokenizer import Tokenizer
    from mimo.training.data import split_files, stdlib_files

    tok = Tokenizer.from_pretrained(tokenizer_dir)
    train_dir = pathlib.Path(out, "train")
    lookup = sum(len(ids) for ids in tok.encode_batch([p.read_text(encoding="utf-8") for p in train_dir.glob("t_*.py")]))
    want = lookup * fraction / (1.0 - fraction)
    files, _ = split_files(stdlib_files(code_root))
    random.Random(seed + 3_000_003).shuffle(files)
    chosen, got = [], 0
    for rel, path in files:  # choose first, copy after: too little code leaves OUT/train/code untouched
        if got >= want:
            break
        text = pathlib.Path(path).read_text(encoding="utf-8")
        chosen.append((rel, text))
        got += len(tok.encode(text))
    if got < want:
        most = math.floor(1000 * got / (got + lookup)) / 1000
        raise SystemExit(f"{code_root or 'the standard library'} has {got} training tokens of code; "
                         f"--code-fraction {fraction} needs {int(want)} beside {lookup} tokens of lookup sections "
                         f"(at most {most} here: pass that or less, or a larger --code-root); "
                         f"no code was copied")
    for rel, text in chosen:
        dest = train_dir / "code" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
    return lookup, got, len(chosen)


def example(rng: random.Random, direction: str, entries: tuple[int, int], vocabulary: list[str]) -> dict:
    """One question: a fresh registry of distinct made-up names, each with two to four words of ``vocabulary``."""
    names, words = registry(rng, entries, vocabulary)
    asked = rng.randrange(len(names))
    lines = [f"{n}: {w}" if direction == "reverse" else f"{w}: {n}" for n, w in zip(names, words)]
    return {"messages": [{"role": "user", "content": "\n".join(lines) + f"\nWhich name has: {words[asked]}"},
                         {"role": "assistant", "content": names[asked]}],
            "choices": names, "answer": names[asked]}


def write(out: str, direction: str, train: int, heldout: int, entries: tuple[int, int], seed: int,
          vocabulary: list[str]) -> None:
    os.makedirs(out, exist_ok=True)
    for split, n, s in (("train", train, seed), ("heldout", heldout, seed + 1_000_003)):
        rng = random.Random(s)
        with open(os.path.join(out, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(json.dumps(example(rng, direction, entries, vocabulary)) + "\n")


def score(model_dir: str, tokenizer_dir: str, data: str, limit: int) -> dict:
    from copy_probe import choose_by_likelihood  # this script's neighbour
    from tqdm import tqdm

    from mimo.checkpoint import MiMoForCausalLM
    from mimo.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(tokenizer_dir)
    model = MiMoForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    with open(data, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:limit]
    right, chance = 0, 0.0
    for ex in tqdm(rows, desc="questions", unit="q"):
        if "messages" in ex:  # a chat question (`data`): the name is the assistant's answer
            prompt, before, after = tok.apply_chat_template(ex["messages"][:1], add_generation_prompt=True), "", ""
        else:  # a plain-text one (`corpus`): the name follows ` -> ` and ends its line
            prompt, before, after = ex["prompt"], " ", "\n"
        head = tok.encode(prompt)
        conts = []
        for name in ex["choices"]:  # each name's tokens as they follow the prompt (a merge across it: the name alone)
            ids = tok.encode(prompt + before + name + after)
            conts.append(ids[len(head):] if ids[: len(head)] == head else tok.encode(before + name + after))
        right += ex["choices"][choose_by_likelihood(model, head, conts)] == ex["answer"]
        chance += 1 / len(ex["choices"])
    return {"model": model_dir, "data": data, "questions": len(rows), "right": right, "chance": round(chance, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="write train.jsonl and heldout.jsonl")
    d.add_argument("--out", required=True)
    d.add_argument("--direction", choices=("reverse", "forward"), default="reverse")
    d.add_argument("--train", type=int, default=30000, help="training questions (default %(default)s)")
    d.add_argument("--heldout", type=int, default=200, help="held-out questions (default %(default)s)")
    d.add_argument("--entries", default="2-4", help="names per registry, LO-HI (default %(default)s)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "mimo-nano-chat-base"),
                   help="the words come from this tokenizer's vocabulary (default %(default)s)")
    c = sub.add_parser("corpus", help="plain-text reverse lookups to pre-train on (mimo train --data-root OUT/train), "
                       "and held-out questions")
    c.add_argument("--out", required=True)
    c.add_argument("--files", type=int, default=1500, help="training files of 6-12 sections each (default %(default)s)")
    c.add_argument("--selfcopy", type=float, default=0.0,
                   help="fraction of sections whose lines repeat their own name (default %(default)s)")
    c.add_argument("--shape", choices=("lines", "tools"), default="lines",
                   help="registries as NAME: WORDS lines, or as the release's tool list (self-copy sections too: "
                   "<description>WORDS -> NAME</description>) (default %(default)s)")
    c.add_argument("--heldout", type=int, default=200, help="held-out questions of each kind (default %(default)s)")
    c.add_argument("--code-fraction", type=float, default=0.0,
                   help="also copy real Python (the standard library's training split) into OUT/train/code until it "
                        "is this fraction of the training tokens (default %(default)s: the lookup alone)")
    c.add_argument("--code-root", help="where --code-fraction takes its Python from (default: this Python's stdlib)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "mimo-nano-chat-base"),
                   help="the words come from this tokenizer's vocabulary (default %(default)s)")
    s = sub.add_parser("score", help="right answers among the offered names, against chance")
    s.add_argument("--model", required=True)
    s.add_argument("--tokenizer", help="tokenizer directory (default: --model; a training checkpoint has none)")
    s.add_argument("--data", required=True, help="a heldout.jsonl written by `data`, or a heldout_KIND.jsonl by `corpus`")
    s.add_argument("--limit", type=int, default=200)
    s.add_argument("--json-out")
    args = ap.parse_args()

    def words() -> list[str]:
        vocabulary = vocabulary_words(args.tokenizer)
        if len(vocabulary) < 50:
            ap.error(f"{args.tokenizer} has {len(vocabulary)} one-token lowercase words; 50 or more are needed")
        return vocabulary

    if args.cmd == "data":
        try:
            lo, hi = (int(x) for x in args.entries.split("-"))
        except ValueError:
            ap.error(f"--entries must be LO-HI, e.g. 2-4 (got {args.entries!r})")
        if not 2 <= lo <= hi:
            ap.error(f"--entries needs 2 <= LO <= HI (got {args.entries!r})")
        write(args.out, args.direction, args.train, args.heldout, (lo, hi), args.seed, words())
        print(f"wrote {args.train} training and {args.heldout} held-out {args.direction} lookups to {args.out}")
        return 0
    if args.cmd == "corpus":
        if not 0.0 <= args.selfcopy <= 1.0:
            ap.error(f"--selfcopy is a fraction between 0 and 1 (got {args.selfcopy})")
        if args.files < 1 or args.heldout < 0:
            ap.error(f"--files needs 1 or more and --heldout 0 or more (got {args.files} and {args.heldout})")
        if not 0.0 <= args.code_fraction < 1.0:
            ap.error(f"--code-fraction is a fraction in [0, 1) (got {args.code_fraction})")
        write_corpus(args.out, args.files, args.selfcopy, args.heldout, args.seed, words(), args.shape)
        print(f"wrote {args.files} training files to {args.out}/train and {args.heldout} held-out questions of each "
              f"kind to {args.out}/heldout_{{reverse,selfcopy}}.jsonl")
        if args.code_fraction > 0:
            lookup, code, copied = add_code(args.out, args.code_fraction, args.seed, args.tokenizer, args.code_root)
            print(f"copied {copied} Python files ({code} tokens) to {args.out}/train/code beside {lookup} tokens of "
                  f"lookup sections: {code / (code + lookup):.1%} code")
        return 0
    if not os.path.isfile(args.data):
        ap.error(f"{args.data} not found: write it with `lookup_sft.py data --out DIR` or `lookup_sft.py corpus --out DIR`")
    out = score(args.model, args.tokenizer or args.model, args.data, args.limit)
    print(f"{out['questions']} questions: {out['right']} right by whole-name likelihood, chance {out['chance']}")
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
