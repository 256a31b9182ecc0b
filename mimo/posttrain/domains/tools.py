"""The tool-calling domain: real standard-library functions and synthetic APIs, offered as tools.

Why the training split looks the way it does. The metric is exact-call accuracy on tool schemas never
trained on (the held-out families). A first SFT run on ~60 standard-library tools learnt the training
tools (17/40) and none of the held-out ones (0/40): the model had memorised the tool *names* (asked a
held-out calendar question it called ``math_comb``). What transfers is *copying*: choose the offered tool
whose description matches the request, copy its name from the system prompt, its argument names from the
schema and the values from the request. So the training split makes memorising useless and copying pay:

* thousands of distinct tools: the standard-library ones (more modules than before) and synthetic APIs
  (:mod:`.synthetic_tools`: ``get_weather(city, unit)``, ``crm_create_contact(...)``, ..., made from
  vocabularies, one family per API domain), so one name is rarely seen twice;
* 1-4 distractors, in a random order, from the target's family, from other standard-library modules and
  from other API domains, so neither a name prefix nor a position but the description identifies the tool;
* half the standard-library examples offer their tools the way held-out ones do (the target among up to three
  other tools of its module, sorted): there only the description and the parameter names tell the tools apart;
* values stated in several ways: ``k = v`` (the held-out form), ``k=v``, ``k: v``, a JSON object, and, for
  synthetic tools, natural phrasing ("Show me the forecast in Paris in celsius") the model must map back
  onto parameter names.

Standard-library tools. A tool is a real function (``textwrap.shorten``, ``math.comb``, ...): its OpenAI
schema is built from ``inspect.signature`` and its docstring's first paragraph (training tools: its first
sentence, at most 160 characters, since the tool list is most of a conversation's tokens); parameter types
come from the default's type, else from a short table of parameter names (the standard library has no
annotations). A parameter we cannot type (a ``key=None`` callable, ``*args``) is left out of the schema
and never passed, as are optional flags and codec names (``flags``, ``encoding``: ``re.DEBUG`` prints).
The values a request states are sampled and the function is *called* with them: a call that raises is
resampled (so every reference call is a valid one), and its real return value is the ``tool`` message's
content. Only pure modules are listed, and side-effecting or environment-dependent functions
(``abspath``, ``relpath``, ``expanduser``, ``exists``, calendar's printers, anything reading locale or
system files) are not, so generation is deterministic for one Python version (the manifest records it).
Synthetic tools have no function: their result is a short JSON object synthesised from the arguments.

Held-out split (``calendar``, ``shlex``, ``colorsys``, ``ipaddress``): generated exactly as before this
design (same random draws, same files): the target plus up to three other functions of its module,
sorted; the user states the task (the docstring's first paragraph) and every value as ``k = v``. No
synthetic vocabulary names a held-out module, and no held-out tool is ever offered in training.

Every example: the assistant calls the tool (the release's XML format, through the chat template); a
``tool`` message carries the result; the assistant answers in one sentence.

Metric, :func:`score`: exact-call accuracy of the first assistant turn. 1 when there is exactly one tool
call, its name is the expected one (or a tool the request cannot tell apart from it, :func:`answers`), its
arguments are a JSON object that validates against that tool's schema (:func:`validate`: types, required, no
unknown keys, enums), every stated argument has exactly the stated value (JSON types compared strictly,
``true`` is not ``1``, but ``3`` and ``3.0`` are one number), and any argument not stated equals its schema
default. Else 0. Parsing the model's XML into
``tool_calls`` is the server's parser's job (``mimo.server.parsers.extract``); the metric takes OpenAI
``tool_calls``. Why a tool other than the reference can be right: ``ipaddress``'s three functions share one
docstring and one required parameter, and ``bisect_left``/``bisect_right`` (as ``urllib.parse``'s ``parse_qs``/
``parse_qsl``) share theirs, so a request that states the description and the values names all of them alike
(71 of the 300 held-out examples ``mimo domains --heldout 300`` writes); no answer could pick the reference
there more often than by chance.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from mimo.posttrain.domains import synthetic_tools
from mimo.posttrain.domains.common import WORDS as _WORDS
from mimo.posttrain.domains.common import one_line

__all__ = ["FAMILIES", "HELDOUT", "STDLIB", "build_tools", "generate", "score", "validate"]

# module -> the functions offered as tools (standard-library families are modules).
STDLIB: dict[str, tuple[str, ...]] = {
    "math": ("sqrt", "cos", "sin", "exp", "log10", "atan2", "copysign", "fmod", "pow", "degrees", "radians",
             "floor", "ceil", "factorial", "comb", "isqrt", "trunc", "tan", "log2", "log1p", "expm1", "fabs", "erf",
             "gamma", "perm", "isclose", "ldexp", "dist", "prod", "fsum", "remainder", "hypot"),
    "statistics": ("mean", "median", "mode", "pstdev", "pvariance", "median_low", "median_high", "fmean",
                   "geometric_mean", "harmonic_mean", "stdev", "variance", "quantiles"),
    "textwrap": ("dedent", "fill", "indent", "shorten", "wrap"),
    "posixpath": ("basename", "dirname", "normpath", "splitext", "split", "isabs", "commonprefix", "commonpath",
                  "normcase"),
    "fnmatch": ("fnmatch", "fnmatchcase", "filter", "translate"),
    "html": ("escape", "unescape"),
    "unicodedata": ("category", "bidirectional", "combining", "decomposition", "east_asian_width", "mirrored",
                    "lookup", "normalize"),
    "difflib": ("get_close_matches",),
    "bisect": ("bisect_left", "bisect_right"),
    "heapq": ("nlargest", "nsmallest"),
    "operator": ("add", "sub", "mul", "truediv", "floordiv", "mod", "neg", "abs", "pow", "eq", "lt", "gt", "ne",
                 "truth"),
    "urllib.parse": ("quote", "quote_plus", "unquote", "urljoin", "urlsplit", "urldefrag", "unquote_plus",
                     "urlparse", "parse_qs", "parse_qsl"),
    "re": ("escape", "findall", "sub", "split"),
    "string": ("capwords",),
    "ntpath": ("basename", "dirname", "splitdrive", "splitext", "normpath", "isabs", "split"),
    "xml.sax.saxutils": ("escape", "unescape", "quoteattr"),
    "email.utils": ("parseaddr", "quote", "unquote"),
    "calendar": ("isleap", "leapdays", "monthrange", "weekday"),
    "shlex": ("quote", "split", "join"),
    "colorsys": ("rgb_to_hsv", "hsv_to_rgb", "rgb_to_hls", "hls_to_rgb", "rgb_to_yiq", "yiq_to_rgb"),
    "ipaddress": ("ip_address", "ip_network", "ip_interface"),
}
# Families: the standard-library modules, then the synthetic API domains (training only).
FAMILIES: dict[str, tuple[str, ...]] = {**STDLIB, **synthetic_tools.FAMILIES}
# Held-out families: modules never seen in training; their parameter types all occur in training.
HELDOUT = ("calendar", "shlex", "colorsys", "ipaddress")

_NUM, _INT, _STR, _BOOL = "number", "integer", "string", "boolean"
_STR_ARRAY = {"type": "array", "items": {"type": "string"}}
_INT_ARRAY = {"type": "array", "items": {"type": "integer"}}
_NUM_ARRAY = {"type": "array", "items": {"type": "number"}}
# Types of parameters without a default, by module then by name (the standard library has no annotations).
_MODULE_TYPES: dict[str, dict[str, Any]] = {
    "math": {"x": _NUM, "y": _NUM, "n": _INT, "k": _INT, "a": _NUM, "b": _NUM, "i": _INT, "p": _NUM_ARRAY,
             "q": _NUM_ARRAY, "iterable": _INT_ARRAY, "seq": _NUM_ARRAY},
    "statistics": {"data": _INT_ARRAY},
    "textwrap": {"text": _STR, "prefix": _STR, "width": _INT},
    "posixpath": {"p": _STR, "path": _STR, "s": _STR, "m": _STR_ARRAY, "paths": _STR_ARRAY},
    "fnmatch": {"name": _STR, "pat": _STR, "names": _STR_ARRAY},
    "html": {"s": _STR},
    "unicodedata": {"chr": _STR, "name": _STR, "form": {"type": "string", "enum": ["NFC", "NFD", "NFKC", "NFKD"]},
                    "unistr": _STR},
    "difflib": {"word": _STR, "possibilities": _STR_ARRAY},
    "bisect": {"a": _INT_ARRAY, "x": _INT},
    "heapq": {"n": _INT, "iterable": _INT_ARRAY},
    "operator": {"a": _NUM, "b": _NUM},
    "urllib.parse": {"string": _STR, "base": _STR, "url": _STR, "qs": _STR},
    "re": {"pattern": _STR, "string": _STR, "repl": _STR},
    "string": {"s": _STR},
    "ntpath": {"p": _STR, "path": _STR, "s": _STR},
    "xml.sax.saxutils": {"data": _STR},
    "email.utils": {"addr": _STR, "str": _STR},
    "calendar": {"year": _INT, "month": _INT, "day": _INT, "y1": _INT, "y2": _INT},
    "shlex": {"s": _STR, "split_command": _STR_ARRAY},
    "colorsys": {n: _NUM for n in "rgbhlsvyiq"},
    "ipaddress": {"address": _STR},
}

# Optional parameters never offered: flags that change global behaviour (re.DEBUG prints), codec names.
_SKIP_PARAMS = frozenset(("flags", "encoding", "errors", "separator", "max_num_fields", "method"))

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")

_EXTS = (".txt", ".py", ".csv", ".json", ".md", ".tar.gz", ".log")
_CHARS = ("A", "z", "7", "é", "ß", "€", "中", "٣", "Ω", " ", "-", "(", "ñ", "ﬁ", "①")
_UNICODE_NAMES = ("LATIN SMALL LETTER A", "GREEK CAPITAL LETTER OMEGA", "EURO SIGN", "DIGIT SEVEN", "SNOWMAN",
                  "BLACK HEART SUIT", "LATIN SMALL LETTER SHARP S", "HYPHEN-MINUS", "LEFT PARENTHESIS")


def _words(rng: random.Random, lo: int, hi: int) -> list[str]:
    return [rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))]


def _string(rng: random.Random, module: str, fn: str, name: str) -> str:
    if module == "posixpath":
        parts = _words(rng, 1, 4)
        if rng.random() < 0.3:
            parts.insert(rng.randrange(len(parts)), rng.choice(("..", ".", "")))
        return ("/" if rng.random() < 0.6 else "") + "/".join(parts) + rng.choice(_EXTS)
    if module == "fnmatch":
        if name == "pat":
            return rng.choice(("*", "[a-m]*", "?")) + rng.choice(("", "_*", "er*")) + rng.choice(_EXTS)
        return rng.choice(_WORDS) + rng.choice(("", "_1", "_data")) + rng.choice(_EXTS)
    if module == "html":
        if fn == "unescape":
            return " ".join(_words(rng, 1, 3)) + rng.choice((" &amp; ", " &lt;b&gt; ", " &quot;x&quot; ", " &#169; "))
        return " ".join(_words(rng, 1, 3)) + rng.choice((" & ", " <b> ", ' "x" ', " 'y' "))
    if module == "unicodedata":
        if name == "name":
            return rng.choice(_UNICODE_NAMES)
        if name == "unistr":
            return rng.choice(("café", "ﬁne", "Ångström", "naïve", "①②", "ｆｕｌｌ"))
        return rng.choice(_CHARS)
    if module == "difflib":
        w = list(rng.choice(_WORDS))
        w[rng.randrange(len(w))] = rng.choice("aeiou")
        return "".join(w)
    if module == "urllib.parse":
        if name in ("base", "url") or fn == "urlsplit":
            host = rng.choice(_WORDS) + ".example.org"
            path = "/".join(_words(rng, 1, 3))
            if name == "url" and fn == "urljoin":
                return rng.choice(("", "../", "/")) + path + rng.choice(("", "?q=1", "#top"))
            return f"https://{host}/{path}" + rng.choice(("", "?page=2", "#section"))
        if fn == "unquote":
            return rng.choice(_WORDS) + rng.choice(("%20", "%2F", "%26", "+")) + rng.choice(_WORDS)
        return " ".join(_words(rng, 1, 3)) + rng.choice(("/a b", "&c=d", "?x", ""))
    if module == "ntpath":
        return rng.choice(("C:", "D:", "")) + "/" + "/".join(_words(rng, 1, 3)) + rng.choice(_EXTS)
    if module == "re":
        if name == "pattern" and fn != "escape":
            return rng.choice((r"\d+", "[aeiou]", r"\s+", "[A-Z][a-z]+", "-", r"\b\w{4}\b", "o+", "[0-9]{2}"))
        if name == "repl":
            return rng.choice(("#", "_", "", "X", rng.choice(_WORDS)))
        return " ".join(rng.choice((w.capitalize(), w, str(rng.randint(1, 999)), w + "-" + w)) for w in _words(rng, 2, 5))
    if module == "xml.sax.saxutils":
        if fn == "unescape":
            return " ".join(_words(rng, 1, 3)) + rng.choice((" &amp; ", " &lt;b&gt; ", " &gt; "))
        return " ".join(_words(rng, 1, 3)) + rng.choice((" & ", " <b> ", " > ", ' "x" '))
    if module == "email.utils":
        first, last = rng.choice(_WORDS), rng.choice(_WORDS)
        if name == "addr":
            return f"{first.capitalize()} {last.capitalize()} <{first}.{last}@example.com>"
        return f"{first} {last}" + rng.choice(("", " (x)", ' "q"', "\\"))
    if module == "shlex":
        return rng.choice(("ls -l ", "grep -n ", "echo ", "cp ")) + rng.choice(("'my file.txt'", '"a b"', "x.py", "$HOME"))
    if module == "ipaddress":
        a, b, c = rng.randrange(1, 224), rng.randrange(256), rng.randrange(256)
        if fn == "ip_network":
            return f"{a}.{b}.{c}.0/24" if rng.random() < 0.7 else f"{a}.{b}.0.0/16"
        if fn == "ip_interface":
            return f"{a}.{b}.{c}.{rng.randrange(1, 255)}/{rng.choice((8, 16, 24))}"
        return f"{a}.{b}.{c}.{rng.randrange(1, 255)}"
    if module == "textwrap":
        if name == "prefix":
            return rng.choice(("> ", "# ", "    ", "- "))
        words = _words(rng, 6, 16)
        if fn in ("dedent", "indent"):
            return "\n".join("    " + " ".join(words[i:i + 4]) for i in range(0, len(words), 4))
        return " ".join(words)
    return " ".join(_words(rng, 1, 3))


def _integer(rng: random.Random, module: str, name: str) -> int:
    if name in ("year", "y1", "y2"):
        return rng.randint(1900, 2100)
    if name == "month":
        return rng.randint(1, 12)
    if name == "day":
        return rng.randint(1, 28)
    if name == "width":
        return rng.randint(12, 40)
    if module == "math" or name == "n":
        return rng.randint(0, 20)
    return rng.randint(0, 999)


def _value(rng: random.Random, module: str, fn: str, name: str, schema: Mapping[str, Any], default: Any) -> Any:
    kind = schema.get("type")
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if kind == _BOOL:
        return not default if isinstance(default, bool) else rng.random() < 0.5
    if kind == _INT:
        if isinstance(default, int) and default > 0 and name not in ("width", "n"):
            return rng.randint(0, 2 * default)
        return _integer(rng, module, name)
    if kind == _NUM:
        if module == "colorsys":
            return round(rng.uniform(0, 1), 2)
        if isinstance(default, float):
            return round(rng.uniform(0, 1), 2)
        return round(rng.uniform(-50, 50), 2) if rng.random() < 0.7 else rng.randint(-50, 50)
    if kind == "array":
        if schema["items"]["type"] == _NUM:
            return [round(rng.uniform(-20, 20), 1) for _ in range(2 if fn == "dist" else rng.randint(2, 5))]
        if schema["items"]["type"] == _INT:
            xs = [rng.randint(1, 99) for _ in range(rng.randint(3, 7))]
            return sorted(xs) if module == "bisect" else xs
        if module == "posixpath":
            root = "/" + "/".join(_words(rng, 1, 2))
            return [root + "/" + w for w in _words(rng, 2, 4)]
        if module == "shlex":
            return [rng.choice(("ls", "echo", "grep")), *[rng.choice(("-l", "my file", "a'b", "x.txt")) for _ in range(2)]]
        if module == "fnmatch":
            return [_string(rng, module, fn, "name") for _ in range(rng.randint(3, 6))]
        return sorted(set(_words(rng, 3, 6)))
    return _string(rng, module, fn, name)


def _schema_of(module: str, fn: str, func: Callable) -> tuple[dict[str, Any], list[inspect.Parameter]] | None:
    """The OpenAI schema of ``func`` and the parameters it lists (in call order), or None if none fit."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    props: dict[str, Any] = {}
    required: list[str] = []
    params: list[inspect.Parameter] = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in _SKIP_PARAMS and p.default is not p.empty:
            continue
        default = p.default
        if default is p.empty or default is None:
            schema = _MODULE_TYPES.get(module, {}).get(p.name)
            if isinstance(schema, str):
                schema = {"type": schema}
        elif isinstance(default, bool):
            schema = {"type": _BOOL}
        elif isinstance(default, int):
            schema = {"type": _INT}
        elif isinstance(default, float):
            schema = {"type": _NUM}
        elif isinstance(default, str):
            schema = {"type": _STR}
        else:
            schema = None
        if schema is None:
            if default is p.empty:
                return None  # a required parameter we cannot describe: the tool is unusable
            continue  # an optional one (a callable, say): leave it out, never pass it
        schema = dict(schema)
        if default is not p.empty and default is not None:
            schema["default"] = default
        if p.kind == p.POSITIONAL_ONLY and default is not p.empty:
            continue  # an optional positional-only parameter cannot be passed by name; keep calls simple
        props[p.name] = schema
        params.append(p)
        if default is p.empty:
            required.append(p.name)
    if not props:
        return None
    doc = inspect.getdoc(func) or ""
    description = one_line(doc.split("\n\n")[0], 300) or f"{module}.{fn}"
    if module not in HELDOUT:  # training tools: the first sentence, as tokens are scarce (held-out ones as before)
        description = one_line(_SENTENCE_END.split(description, 1)[0], 160)
    tool = {"type": "function", "function": {
        "name": f"{module.replace('.', '_')}_{fn}",
        "description": description,
        "parameters": {"type": "object", "properties": props, "required": required},
    }}
    return tool, params


@cache
def build_tools(module: str) -> dict[str, tuple[dict[str, Any], Callable, list[inspect.Parameter]]]:
    """Tool name -> (schema, function, parameters) for one family."""
    mod = importlib.import_module(module)
    out = {}
    for fn in STDLIB[module]:
        func = getattr(mod, fn)
        made = _schema_of(module, fn, func)
        if made is not None:
            out[made[0]["function"]["name"]] = (made[0], func, made[1])
    return out


def _call(func: Callable, params: list[inspect.Parameter], args: dict[str, Any]) -> Any:
    pos = [args[p.name] for p in params if p.kind == p.POSITIONAL_ONLY]
    kw = {p.name: args[p.name] for p in params if p.kind != p.POSITIONAL_ONLY and p.name in args}
    return func(*pos, **kw)


def _result_text(result: Any) -> str | None:
    try:
        text = json.dumps(result, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(result) if not isinstance(result, float) else str(result)
        if " at 0x" in text:  # an object identity: not deterministic
            return None
    return text if len(text) <= 400 else text[:397] + "..."


def _say(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


_REQUESTS = (
    "{task} Use {args}.",
    "Please help: {task} The arguments are {args}.",
    "{task} Call the right tool with {args}.",
    "I need this done: {task} Take {args}.",
)


def _sample_call(module: str, target: str, rng: random.Random) -> tuple[dict[str, Any], str] | None:
    """Stated arguments for a standard-library tool and the text of its real result (None: no valid call in
    20 tries)."""
    schema, func, params = build_tools(module)[target]
    fn = target[len(module.replace(".", "_")) + 1:]  # the function's own name, which the value samplers expect
    for _ in range(20):
        args: dict[str, Any] = {}
        for p in params:
            prop = schema["function"]["parameters"]["properties"][p.name]
            if p.default is p.empty or rng.random() < 0.35:
                args[p.name] = _value(rng, module, fn, p.name, prop, None if p.default is p.empty else p.default)
        try:
            result = _call(func, params, args)
        except Exception:  # a value outside the function's domain (sqrt(-1), ...): sample again
            continue
        text = _result_text(result)
        if text is not None:
            return args, text
    return None


def _conversation(name: str, request: str, args: dict[str, Any], result: str) -> list[dict[str, Any]]:
    call = {"id": "call_0", "type": "function", "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}
    return [
        {"role": "user", "content": request},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": result},
        {"role": "assistant", "content": f"{name} returned {one_line(result, 200)}."},
    ]


def _task(description: str) -> str:
    return description if description.endswith((".", "!", "?")) else description + "."


def _generate_heldout(module: str, index: int, rng: random.Random) -> dict[str, Any] | None:
    """A held-out example: the target (drawn from the family's own stream, so every tool of the module is
    asked for) and three other tools of its module, sorted; the task is the description and every value is
    stated as ``k = v``."""
    tools = build_tools(module)
    names = sorted(tools)
    target = rng.choice(names)
    made = _sample_call(module, target, rng)
    if made is None:
        return None
    args, text = made
    others = [n for n in names if n != target]
    offered = sorted(rng.sample(others, min(3, len(others))) + [target])
    stated = " and ".join(f"{k} = {_say(v)}" for k, v in args.items())
    request = rng.choice(_REQUESTS).format(task=_task(tools[target][0]["function"]["description"]), args=stated)
    return {"messages": _conversation(target, request, args, text), "tools": [tools[n][0] for n in offered],
            "reference": {"name": target, "arguments": args}}


# Training requests vary how stated values are written; the held-out form (``k = "v" and ...``) stays common.
_STATED = (
    lambda args: " and ".join(f"{k} = {_say(v)}" for k, v in args.items()),
    lambda args: " and ".join(f"{k} = {_say(v)}" for k, v in args.items()),
    lambda args: ", ".join(f"{k}={_say(v)}" for k, v in args.items()),
    lambda args: ", ".join(f"{k}: {_say(v)}" for k, v in args.items()),
    lambda args: json.dumps(args, ensure_ascii=False),
)
_TRAIN_REQUESTS = (*_REQUESTS, "{task} Arguments: {args}.", "{args}. {task}", "Task: {task} Values: {args}.")
_N_DISTRACTORS = (1, 1, 1, 1, 2, 2, 2, 3, 4)  # mostly short tool lists: the tool list is most of the tokens
_TRAIN_STDLIB = tuple(m for m in STDLIB if m not in HELDOUT)
_MODULE_SHARE = 0.5  # the share of standard-library examples whose tools are offered the way held-out ones are: the
# target among tools of its own module (similar names, sorted, the first one no hint), told apart by description and
# parameter names. A model trained on mixed lists only chose the right tool of such a list about half the time, even
# on training modules, and the first one listed when unsure (docs/POSTTRAINING.md, section 4).


def _stated_request(rng: random.Random, description: str, args: dict[str, Any]) -> str:
    if not args:
        return _task(description)
    return rng.choice(_TRAIN_REQUESTS).format(task=_task(description), args=rng.choice(_STATED)(args))


def _distractors(rng: random.Random, family: str, target: str, same: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """1-4 other tools: of the target's own family (``same`` for a standard-library module; a fresh synthetic
    tool otherwise), of another standard-library training module, or of another API domain, so that neither
    the family nor a name prefix but the description identifies the tool."""
    out: list[dict[str, Any]] = []
    names = {target}
    want = rng.choice(_N_DISTRACTORS)
    for _ in range(20):
        if len(out) >= want:
            break
        r = rng.random()
        if r < 0.5 and (same or family in synthetic_tools.FAMILIES):
            tool = rng.choice(same) if same else synthetic_tools.make_tool(rng, family).schema
        elif r < 0.75:
            mod = rng.choice(_TRAIN_STDLIB)
            tool = build_tools(mod)[rng.choice(sorted(build_tools(mod)))][0]
        else:
            tool = synthetic_tools.make_tool(rng, rng.choice(sorted(synthetic_tools.FAMILIES))).schema
        if tool["function"]["name"] not in names:
            names.add(tool["function"]["name"])
            out.append(tool)
    return out


def _offer(rng: random.Random, target: dict[str, Any], others: list[dict[str, Any]]) -> list[dict[str, Any]]:
    offered = [*others, target]
    rng.shuffle(offered)
    return offered


def _generate_stdlib_train(module: str, index: int, rng: random.Random) -> dict[str, Any] | None:
    tools = build_tools(module)
    names = sorted(tools)
    target = names[index % len(names)]
    made = _sample_call(module, target, rng)
    if made is None:
        return None
    args, text = made
    schema = tools[target][0]
    request = _stated_request(rng, schema["function"]["description"], args)
    others = [n for n in names if n != target]
    if len(names) >= 3 and rng.random() < _MODULE_SHARE:  # the held-out shape: among up to 3 others of its module, sorted
        offer = [tools[n][0] for n in sorted(rng.sample(others, min(3, len(others))) + [target])]
    else:
        offer = _offer(rng, schema, _distractors(rng, module, target, [tools[n][0] for n in others]))
    return {"messages": _conversation(target, request, args, text), "tools": offer,
            "reference": {"name": target, "arguments": args}}


def _generate_synthetic(family: str, rng: random.Random) -> dict[str, Any]:
    tool = synthetic_tools.make_tool(rng, family)
    args = synthetic_tools.sample_arguments(rng, tool)
    text = json.dumps(synthetic_tools.result_of(rng, tool, args), ensure_ascii=False)
    others = _distractors(rng, family, tool.name, None)
    if rng.random() < 0.55:
        request = synthetic_tools.request_text(rng, tool, args)
    else:
        request = _stated_request(rng, tool.schema["function"]["description"], args)
    return {"messages": _conversation(tool.name, request, args, text), "tools": _offer(rng, tool.schema, others),
            "reference": {"name": tool.name, "arguments": args}}


def generate(family: str, index: int, rng: random.Random) -> dict[str, Any] | None:
    """One example of ``family`` (None when no valid call was found in a few tries)."""
    if family in HELDOUT:
        return _generate_heldout(family, index, rng)
    if family in STDLIB:
        return _generate_stdlib_train(family, index, rng)
    return _generate_synthetic(family, rng)


# ------------------------------------------------------------------------------------------------ metric

def _type_ok(value: Any, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "null":
        return value is None
    return False


def _valid_value(value: Any, schema: Mapping[str, Any]) -> bool:
    if "enum" in schema and value not in schema["enum"]:
        return False
    kind = schema.get("type")
    if kind is None:
        return True
    if not _type_ok(value, kind):
        return False
    if kind == "array" and "items" in schema:
        return all(_valid_value(v, schema["items"]) for v in value)
    return True


def validate(arguments: Any, parameters: Mapping[str, Any]) -> bool:
    """True when ``arguments`` satisfies the JSON Schema subset our tools use: an object, every ``required``
    key present, no key outside ``properties``, each value of its ``type`` (``string``, ``integer``,
    ``number``, ``boolean``, ``array`` with ``items``, ``object``, ``null``; booleans are not numbers), in its
    ``enum`` if any."""
    if not isinstance(arguments, dict):
        return False
    props = parameters.get("properties", {})
    if any(k not in arguments for k in parameters.get("required", ())):
        return False
    return all(k in props and _valid_value(v, props[k]) for k, v in arguments.items())


def _same(a: Any, b: Any) -> bool:
    # Strict on JSON types (True is not 1), except that 3 and 3.0 are one number.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def answers(example: Mapping[str, Any]) -> set[str]:
    """The offered tools that answer the request: the reference and every offered tool the request cannot tell
    apart from it (the same description, and the reference's arguments are a valid call of it)."""
    ref = example["reference"]
    target = next(t["function"] for t in example["tools"] if t["function"]["name"] == ref["name"])
    return {ref["name"]} | {
        t["function"]["name"] for t in example["tools"]
        if t["function"].get("description") == target.get("description")
        and validate(ref["arguments"], t["function"]["parameters"])
    }


def score(example: Mapping[str, Any], tool_calls: list[Mapping[str, Any]] | None) -> float:
    """Exact-call accuracy of one answer: 1.0 or 0.0 (see the module docstring). ``tool_calls`` is the
    OpenAI list the server's parser returns for the first assistant turn."""
    if not tool_calls or len(tool_calls) != 1:
        return 0.0
    fn = tool_calls[0].get("function", tool_calls[0])
    ref = example["reference"]
    if fn.get("name") not in answers(example):
        return 0.0
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return 0.0
    tool = next(t for t in example["tools"] if t["function"]["name"] == fn["name"])
    params = tool["function"]["parameters"]
    if not validate(args, params):
        return 0.0
    for key, value in args.items():
        expected = ref["arguments"].get(key, params["properties"][key].get("default", object()))
        if not _same(value, expected):
            return 0.0
    return 1.0 if all(k in args for k in ref["arguments"]) else 0.0
