"""Structured outputs: every constrained sample follows its grammar (JSON schema, regex, tool-call structural tag),
greedy or sampled, on a plain or a speculative engine; speculation keeps constrained greedy output and the
constrained sampling distribution; constrained rows leave the other rows of their batch unchanged; a bad
constraint is refused before anything is queued."""

import json

import pytest
import torch

from mimo import LLM, SamplingParams, StructuredOutputsParams
from mimo.chat_format.parsers import extract
from mimo.chat_format.tool_grammar import tool_call_tag
from mimo.engine.engine import Engine
from mimo.posttrain.domains.tools import validate
from mimo.tokenizer import Tokenizer, train_bpe
from tests.helpers import oracle_model, random_model, tiny_config

_TEXTS = ['{"name": "alice", "age": 31, "ok": true}', "<tool_call>\n<function=get_weather>\n<parameter=city>Paris",
          "</parameter>\n</function>\n</tool_call>", "def f(x):\n    return x + 1\n", "True False None 2024 hello"]
PERSON = {"type": "object", "properties": {"name": {"enum": ["alice", "bob", "carol"]}, "ok": {"type": "boolean"},
                                           "pet": {"enum": ["cat", "dog"]}},
          "required": ["name", "ok"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
             "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}, "metric": {"type": "boolean"}},
             "required": ["city"]}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
             "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(train_bpe(_TEXTS * 3, 320))


@pytest.fixture(scope="module")
def model(tok):
    return random_model(tiny_config(vocab_size=tok.vocab_size, sliding_window=5, num_hidden_layers=6), seed=4)


def _prompts(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(10, 300, (k,), generator=g).tolist() for k in (3, 9, 17)][:n]


def _json(**kw):
    return SamplingParams(max_tokens=200, structured_outputs=StructuredOutputsParams(json=PERSON), **kw)


@pytest.mark.parametrize("k", [0, 3])
def test_json_schema_outputs_validate_greedy_and_sampled(model, tok, k):
    llm = LLM(model, tokenizer=tok, num_speculative_tokens=k)
    for params in (_json(temperature=0), _json(temperature=1.0, seed=7, n=2)):
        for out in llm.generate(_prompts(), params):
            for c in out.outputs:
                assert c.finish_reason == "stop", c.text  # the grammar ends at its stop token, not at max_tokens
                value = json.loads(c.text)
                assert validate(value, PERSON), c.text


def test_constrained_greedy_is_the_same_on_a_speculative_engine(model, tok):
    """Drafts of a constrained row are verified against the grammar's mask at each position (the matcher walks
    them and rolls back): the output is the constrained plain greedy one."""
    plain = [o.outputs[0].token_ids for o in LLM(model, tokenizer=tok).generate(_prompts(), _json(temperature=0))]
    for k in (1, 3):
        outs = LLM(model, tokenizer=tok, num_speculative_tokens=k, speculative_policy="fixed").generate(
            _prompts(), _json(temperature=0))
        assert [o.outputs[0].token_ids for o in outs] == plain, k
        assert all(o.stats.drafted > 0 for o in outs)


def test_drafts_the_grammar_allows_are_accepted_and_the_others_rejected(tok):
    """A model whose drafts are always its own next token (tests.helpers.oracle_model): from token "0" it cycles
    through "o", "\x1d", .... Under a grammar that allows four cycles then one of x, y, z, the drafts inside the
    cycles are accepted (each position masked by the grammar after the drafts before it) and the draft past them,
    which the grammar refuses, is rejected: the output is the constrained plain greedy one."""
    oracle = oracle_model(tiny_config(vocab_size=tok.vocab_size, sliding_window=5, num_hidden_layers=6), seed=5)
    start = tok.encode("0")
    free = LLM(oracle, tokenizer=tok).generate([start], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert free[0].outputs[0].text == "o\x1do\x1do\x1d"  # the model this test relies on
    params = SamplingParams(temperature=0, max_tokens=20, structured_outputs=StructuredOutputsParams(
        regex="(o\x1d){4}[xyz]{2}"))
    plain = LLM(oracle, tokenizer=tok).generate([start], params)[0].outputs[0]
    assert plain.text.startswith("o\x1d" * 4) and len(plain.text) == 10
    spec = LLM(oracle, tokenizer=tok, num_speculative_tokens=3, speculative_policy="fixed").generate([start], params)[0]
    assert spec.outputs[0].token_ids == plain.token_ids
    assert spec.stats.accepted >= 4 and spec.stats.accepted < spec.stats.drafted


def test_constrained_sampling_with_drafts_keeps_the_distribution(model, tok):
    """Rejection sampling against the masked target is exact whatever the (unmasked) drafts propose: the joint
    distribution of a constrained sample's first three tokens is the same with and without speculation."""
    params = SamplingParams(temperature=1.0, seed=5, n=600, max_tokens=3,
                            structured_outputs=StructuredOutputsParams(regex="[a-c]{3}"))
    counts = []
    for k in (0, 2):
        llm = LLM(model, tokenizer=tok, num_speculative_tokens=k, speculative_policy="fixed", max_num_seqs=64)
        texts = [c.text for c in llm.generate(_prompts(1), params)[0].outputs]
        assert all(len(t) == 3 and set(t) <= set("abc") for t in texts)
        counts.append({t: texts.count(t) for t in texts})
    # two-sample chi-square (homogeneity); outcomes seen fewer than 20 times in all are pooled into one bin
    keys = sorted(set(counts[0]) | set(counts[1]))
    big = [key for key in keys if counts[0].get(key, 0) + counts[1].get(key, 0) >= 20]
    table = torch.tensor([[c.get(key, 0) for key in big] + [sum(v for key, v in c.items() if key not in big)]
                          for c in counts], dtype=torch.float64)
    table = table[:, table.sum(0) > 0]
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    stat = ((table - expected) ** 2 / expected).sum()
    dof = table.shape[1] - 1
    assert dof >= 3, counts  # the test must have outcomes to compare
    pvalue = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))
    assert pvalue > 1e-3, (pvalue, counts)


def test_unconstrained_rows_of_a_mixed_batch_are_unchanged(model, tok):
    """A constrained row in the batch (masked) changes nothing for the rows beside it."""
    free = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    alone = [o.outputs[0].token_ids for o in LLM(model, tokenizer=tok, num_speculative_tokens=2).generate(_prompts(2), free)]
    mixed = LLM(model, tokenizer=tok, num_speculative_tokens=2).generate(_prompts(3), [free, free, _json(temperature=0)])
    assert [o.outputs[0].token_ids for o in mixed[:2]] == alone
    json.loads(mixed[2].outputs[0].text)


def test_a_sample_that_goes_on_after_its_grammar_ended_repeats_stop_tokens(model, tok):
    """ignore_eos: the grammar accepted a stop token and ended, the sample goes on to max_tokens with stop tokens."""
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, skip_special_tokens=False,
                            structured_outputs=StructuredOutputsParams(regex="(yes|no)"))
    out = LLM(model, tokenizer=tok).generate(_prompts(1), params)[0].outputs[0]
    stops = {tok.eos_token_id, tok.token_to_id("<|im_end|>"), *LLM(model, tokenizer=tok).engine.eos_ids}
    assert len(out.token_ids) == 12
    first_stop = next(i for i, t in enumerate(out.token_ids) if t in stops)
    assert tok.decode(out.token_ids[:first_stop]) in ("yes", "no")
    assert all(t in stops for t in out.token_ids[first_stop:])


def test_regex(model, tok):
    params = SamplingParams(temperature=1.0, seed=3, n=4, max_tokens=40,
                            structured_outputs=StructuredOutputsParams(regex=r"(yes|no)-[0-9]{2,3}"))
    for c in LLM(model, tokenizer=tok).generate(_prompts(1), params)[0].outputs:
        assert c.text.split("-")[0] in ("yes", "no") and c.text.split("-")[1].isdigit(), c.text
        assert 2 <= len(c.text.split("-")[1]) <= 3


@pytest.mark.parametrize("choice", ["required", "get_time"])
def test_tool_call_tag_forces_a_call_that_parses_and_validates(model, tok, choice):
    tools = TOOLS if choice == "required" else [t for t in TOOLS if t["function"]["name"] == choice]
    tag = tool_call_tag(tools, required=True, parallel=False)
    params = SamplingParams(temperature=1.0, seed=11, n=4, max_tokens=120, skip_special_tokens=False,
                            structured_outputs=StructuredOutputsParams(structural_tag=tag))
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for c in LLM(model, tokenizer=tok, num_speculative_tokens=3).generate(_prompts(1), params)[0].outputs:
        parsed = extract(c.text, tools)
        assert len(parsed.tool_calls) == 1, c.text
        fn = parsed.tool_calls[0]["function"]
        assert fn["name"] in [t["function"]["name"] for t in tools]
        assert validate(json.loads(fn["arguments"]), schemas[fn["name"]]), c.text


def test_tool_call_tag_spells_values_as_the_template_writes_them(tok):
    """Every call the template can render for a schema is in the grammar; padded, reordered, repeated or
    missing-required arguments are not."""
    import xgrammar as xgr
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "s": {"type": "string"}, "n": {"type": "integer"}, "x": {"type": "number"}, "b": {"type": "boolean"},
        "e": {"enum": ["a b", 3]}, "xs": {"type": "array", "items": {"type": "integer"}}, "z": {"type": "null"}},
        "required": ["s", "n"]}}}]
    from mimo.engine.structured import Grammars
    compiled = Grammars(tok, tok.vocab_size, [tok.token_to_id("<|im_end|>")]).compile(
        StructuredOutputsParams(structural_tag=tool_call_tag(tools)))
    msgs = [{"role": "user", "content": "x"}]

    def accepts(text):
        return xgr.GrammarMatcher(compiled).accept_string(text)

    for args in ({"s": " two  words\n", "n": -12, "x": 2.5, "b": True, "e": "a b", "xs": [1, 2], "z": None},
                 {"s": "", "n": 0, "b": False, "e": 3}, {"s": "<b>", "n": 7, "x": 1e-05}):
        rendered = tok.apply_chat_template([*msgs, {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": args}}]}])
        call = rendered[rendered.index("<tool_call>"): rendered.rindex("</tool_call>") + len("</tool_call>")]
        assert accepts(call), call
    head = "<tool_call>\n<function=f>\n"
    assert accepts(head + "<parameter=s>x</parameter>\n<parameter=n>true</parameter>\n") is False  # a bool as int
    assert not accepts(head + "<parameter=n>1</parameter>\n")  # s is required and comes first
    assert not accepts(head + "<parameter=s>x</parameter>\n<parameter=n> 1</parameter>\n")  # padded
    assert not accepts(head + "<parameter=s>x</parameter>\n<parameter=s>y</parameter>\n")  # repeated
    assert not accepts(head + "<parameter=s>x</parameter>\n<parameter=n>1</parameter>\n<parameter=e>c</parameter>")
    assert not accepts("<tool_call>\n<function=g>\n")  # not an offered tool
    with pytest.raises(ValueError, match="at least one tool"):
        tool_call_tag([])


def test_bad_constraints_are_refused_before_anything_is_queued(model, tok):
    engine = Engine(model, tok)
    with pytest.raises(ValueError, match="invalid json"):
        engine.add_request([5, 6], SamplingParams(structured_outputs=StructuredOutputsParams(json={"type": "objectx"})))
    with pytest.raises(ValueError, match="invalid regex"):
        engine.add_request([5, 6], SamplingParams(structured_outputs=StructuredOutputsParams(regex="(unclosed")))
    assert not engine.has_unfinished()
    llm = LLM(model, tokenizer=tok)
    bad = SamplingParams(structured_outputs=StructuredOutputsParams(json={"type": "objectx"}))
    with pytest.raises(ValueError, match="invalid json"):
        llm.generate(_prompts(2), [SamplingParams(max_tokens=3), bad])
    assert not llm.engine.has_unfinished()  # the first prompt, admitted before the second failed, is gone too
    with pytest.raises(ValueError, match="exactly one of"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match="exactly one of"):
        StructuredOutputsParams(json={"type": "object"}, regex="a")
    with pytest.raises(ValueError, match="structured_outputs"):
        SamplingParams(structured_outputs={"json": {}})
    with pytest.raises(ValueError, match="need the engine's tokenizer"):
        Engine(model).add_request([5], SamplingParams(structured_outputs=StructuredOutputsParams(regex="a")))
