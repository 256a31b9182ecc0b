"""Exact-call accuracy of a chat model on held-out tool schemas, measured as a user would: ``mimo serve`` in a
subprocess and the official ``openai`` client (issue #15's acceptance figure).

Each held-out example's conversation up to its first assistant turn is sent to ``/v1/chat/completions`` with
the example's tools; the reply's parsed ``tool_calls`` (the server's parser, not ours) are scored by
:func:`mimo.posttrain.domains.tools.score`: one call, the expected function, arguments that validate against
its schema and carry exactly the values the request stated. Greedy by default (``--temperature 0``), so the
figure is reproducible; ``--temperature`` with ``--seed`` measures the shipped sampling defaults instead.

    .venv/bin/python scripts/eval_tools_openai.py --model DIR --data DIR [--limit 100] [--json-out F]
        [--no-constrained-decoding]

The server constrains tool calls to the offered tools' schemas by default (where xgrammar is installed, see
:mod:`mimo.chat_format.tool_grammar`), as a user's `mimo serve` does; ``--no-constrained-decoding`` measures the
model alone.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mimo.posttrain import domains  # noqa: E402
from mimo.posttrain.domains import tools  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(client, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mimo serve exited with code {proc.returncode} before it was ready")
        try:
            client.models.list()
            return
        except Exception:  # not listening yet
            time.sleep(0.5)
    raise TimeoutError(f"mimo serve was not ready within {timeout:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: what `mimo serve` serves with no --model)")
    ap.add_argument("--data", required=True, help="what write_domains wrote (has tools/heldout.jsonl)")
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--limit", type=int, default=100, help="examples scored (default 100)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--no-constrained-decoding", dest="constrained", action="store_false",
                    help="serve without the tool-call grammar (mimo serve --no-constrained-decoding): the model alone")
    ap.add_argument("--json-out")
    args = ap.parse_args()

    import openai

    examples = domains.load(args.data, "tools", args.split)[: args.limit]
    port = free_port()
    cmd = [sys.executable, "-m", "mimo.cli.main", "serve", "--port", str(port), "--log-level", "warning"]
    if args.model:
        cmd += ["--model", args.model]
    if not args.constrained:
        cmd.append("--no-constrained-decoding")
    proc = subprocess.Popen(cmd)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)
    result: dict = {"model": args.model or "(mimo serve default)", "split": args.split, "temperature": args.temperature,
                    "constrained_decoding": args.constrained}
    try:
        wait_ready(client, proc)
        model_id = client.models.list().data[0].id
        scores, by_family, failures = [], {}, []
        t = time.perf_counter()
        for ex in examples:
            reply = client.chat.completions.create(
                model=model_id, messages=domains.prompt_messages(ex), tools=ex["tools"], temperature=args.temperature,
                seed=args.seed, max_tokens=args.max_tokens)
            msg = reply.choices[0].message
            calls = [c.model_dump() for c in msg.tool_calls or []]
            s = tools.score(ex, calls)
            scores.append(s)
            fam = by_family.setdefault(ex["family"], [0.0, 0])
            fam[0] += s
            fam[1] += 1
            if not s and len(failures) < 8:
                failures.append({"id": ex["id"], "expected": ex["reference"], "tool_calls": calls,
                                 "content": (msg.content or "")[:200]})
        seconds = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    acc = sum(scores) / len(scores)
    result.update(examples=len(scores), exact_call_accuracy=acc, seconds=seconds,
                  per_family={f: a / n for f, (a, n) in sorted(by_family.items())}, failures=failures)
    print(f"exact-call accuracy {sum(scores):.0f}/{len(scores)} = {acc:.3f} ({seconds:.0f} s); per family: "
          + ", ".join(f"{f} {v:.2f}" for f, v in result["per_family"].items()))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
