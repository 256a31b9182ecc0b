"""A screenshot of the chat page mid-reply, for the README (``docs/chat-page.png``).

    python scripts/screenshot.py [--out docs/chat-page.png] [--model DIR] [--prompt TEXT] [--tokens N]

Starts ``mimo serve --mtp 3`` (the shipped mimo-nano unless ``--model``) on a free loopback port, opens the
page it prints in the system's headless Chromium (Debian's ``chromium``, driven by Playwright: nothing is
downloaded), sends the prompt greedily, and saves a PNG once N tokens have streamed, while the reply still runs.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, port: int) -> tuple[subprocess.Popen, str]:
    """``mimo serve`` in a child process; returns it and the page URL it printed, once it answers."""
    # fixed: every step drafts 3, so the picture shows tokens accepted at every depth (the adaptive policy may
    # draft fewer in a short session)
    cmd = [sys.executable, "-m", "mimo", "serve", "--mtp", "3", "--speculative-policy", "fixed", "--port", str(port),
           "--log-level", "warning"]
    if model:
        cmd += ["--model", model]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    url, seen = None, []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("open http"):
            url = line.split()[1]
            break
    if url is None:
        raise RuntimeError("mimo serve stopped before printing the page's URL:\n" + "".join(seen))
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "health", timeout=5):
                return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mimo serve did not start answering") from None
            time.sleep(0.2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/chat-page.png", help="PNG to write (default docs/chat-page.png)")
    p.add_argument("--model", help="model directory (default: mimo serve's, the shipped mimo-nano)")
    p.add_argument("--prompt", default="def fibonacci(n):", help="the message to send")
    p.add_argument("--tokens", type=int, default=30,
                   help="tokens streamed before the screenshot is taken (default 30; more arrive meanwhile)")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    proc, url = start_server(args.model, free_port())
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            page.locator("#mtp-info").filter(has_text="MTP").wait_for(timeout=30_000)
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "600")
            page.select_option("#view", "tokens")  # the colours, without the same text twice
            page.fill("#prompt", args.prompt)
            page.press("#prompt", "Enter")
            page.locator(".msg.assistant .tok").nth(args.tokens - 1).wait_for(timeout=120_000)
            page.screenshot(path=args.out)
            still_running = page.is_enabled("#stop")
            page.keyboard.press("Escape")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size // 1024} KiB){'' if still_running else ' (the reply had already ended)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
