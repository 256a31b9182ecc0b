"""``mimo <subcommand>``: argument parsing and dispatch. Subcommand modules are imported lazily."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "info": ("mimo.cli.info", "parameter counts and KV-cache sizes of a preset or model directory"),
    "serve": ("mimo.cli.serve", "OpenAI-compatible HTTP server (chat, completions, streaming, tools, metrics)"),
    "train": ("mimo.cli.train", "pre-train a preset (mimo-nano by default) on the Python standard library"),
    "generate": ("mimo.cli.generate", "complete a prompt with a model (default: the shipped mimo-nano)"),
    "eval": ("mimo.cli.eval", "held-out loss, bits per byte vs unigram and zlib, MTP accuracy, acceptance length"),
    "bench": ("mimo.cli.bench", "prefill and decode speed, with and without MTP, as a table and JSON"),
    "domains": ("mimo.cli.domains", "write the post-training data of the verifiable domains (tools, arithmetic, code)"),
    "sft": ("mimo.cli.sft", "supervised fine-tuning on chat examples (loss on the assistant's tokens only)"),
    "mopd": ("mimo.cli.mopd", "multi-teacher on-policy distillation: the student samples, domain teachers score each token"),
    "quantize": ("mimo.cli.quantize", "write a model in the release's FP8 layout (e4m3, block scales)"),
    "kernels": ("mimo.cli.kernels", "state of mimo's CPU decode kernels; --build builds them ahead of time"),
}


def one_line(message: str, limit: int = 1000) -> str:
    """An error message cut to its first line (a prompt echoed in it may be a whole file)."""
    first, *rest = str(message).splitlines() or [""]
    if rest or len(first) > limit:
        return first[:limit] + " [...]"
    return first


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        super().error(one_line(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mimo", description="MiMo-V2-Flash: model, engine, training and server.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.version:
        from mimo import __version__

        print(f"mimo {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"mimo {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mimo info | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
