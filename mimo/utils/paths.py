"""Where the shipped default model lives."""

from __future__ import annotations

from pathlib import Path


def default_model_dir() -> Path:
    """``models/mimo-nano`` at the root of the source tree this package was installed from."""
    return Path(__file__).resolve().parents[2] / "models" / "mimo-nano"


def default_chat_model_dir(models: Path | None = None) -> Path:
    """What ``mimo serve`` serves with no ``--model``: the post-trained ``models/mimo-nano-chat`` where the tree
    ships it (the chat API is for conversations, tool calls and reasoning, which the base model never learnt),
    else the base ``models/mimo-nano``. ``models``: the folder to look in (the source tree's by default)."""
    models = models or default_model_dir().parent
    chat = models / "mimo-nano-chat"
    return chat if (chat / "config.json").exists() else models / "mimo-nano"


def resolve_model_dir(model: str | None) -> str:
    """The ``--model`` argument, or the shipped mimo-nano; a clear error when neither exists."""
    path = Path(model) if model else default_model_dir()
    if not (path / "config.json").exists():
        if model:
            raise FileNotFoundError(f"no model at {path} (expected config.json and safetensors weights)")
        raise FileNotFoundError(
            f"the default model is missing at {path}; run from a clone of the repository (it ships models/mimo-nano) "
            "or pass --model DIR"
        )
    return str(path)
