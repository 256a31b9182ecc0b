"""32 concurrent streaming clients against `mimo serve` (a real subprocess on loopback) vs one stream.

    .venv/bin/python benchmarks/server_load.py --model models/mimo-nano --json-out benchmarks/results/server-load.json

Every client asks for the same number of tokens (ignore_eos) and must get exactly that many.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import write_json  # noqa: E402


async def stream(c: httpx.AsyncClient, prompt: str, max_tokens: int) -> int:
    body = {"model": "mimo", "prompt": prompt, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "temperature": 0.8, "stream_options": {"include_usage": True}}
    usage = None
    async with c.stream("POST", "/v1/completions", json=body) as r:  # base_url is the server root
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    return usage["completion_tokens"]


async def run(url: str, clients: int, max_tokens: int) -> dict:
    prompts = ["def parse_args(argv):\n", "class LRUCache:\n", "import os\n\n\ndef walk(", "for i in range("]
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients * 2)) as c:
        await stream(c, prompts[0], 8)  # warm-up
        t = time.perf_counter()
        n1 = await stream(c, prompts[0], max_tokens)
        single = n1 / (time.perf_counter() - t)
        t = time.perf_counter()
        counts = await asyncio.gather(*[stream(c, prompts[i % len(prompts)], max_tokens) for i in range(clients)])
        agg = sum(counts) / (time.perf_counter() - t)
    assert all(n == max_tokens for n in counts), counts
    return {"clients": clients, "max_tokens": max_tokens, "single_stream_tps": single, "aggregate_tps": agg,
            "ratio": agg / single}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="models/mimo-nano")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--mtp", type=int, default=0)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mimo", "serve", "--model", args.model, "--port", str(port), "--served-model-name",
           "mimo", "--max-num-seqs", str(args.clients), "--mtp", str(args.mtp)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        res = {"model": args.model, "mtp": args.mtp, **asyncio.run(run(url, args.clients, args.max_tokens))}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(json.dumps(res, indent=2))
    write_json(args.json_out, res)


if __name__ == "__main__":
    main()
