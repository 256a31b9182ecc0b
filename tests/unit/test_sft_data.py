"""SFT rows: the loss is taken on exactly the assistant's generated text, through its end token."""

import json

import pytest

from mimo.posttrain.domains import write_domains
from mimo.posttrain.sft_data import assistant_spans, to_row
from mimo.tokenizer import Tokenizer
from mimo.utils.paths import resolve_model_dir


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained(resolve_model_dir(None))


def _trained_text(tok, row):
    """The trained tokens' text, turn by turn (consecutive trained tokens joined)."""
    out, cur = [], []
    for t, m in zip(row.ids, row.loss_mask):
        if m:
            cur.append(t)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    if cur:
        out.append(tok.decode(cur))
    return out


def test_only_the_assistant_turns_are_trained(tok):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "Again, in code."},
        {"role": "assistant", "content": "print('hi')\n"},
    ]
    row = to_row(tok, {"messages": messages})
    assert len(row.ids) == len(row.loss_mask)
    assert _trained_text(tok, row) == ["hi<|im_end|>", "print('hi')\n<|im_end|>"]
    # what is not trained is the rest of the conversation, the prompts included
    untrained = tok.decode([t for t, m in zip(row.ids, row.loss_mask) if not m])
    assert "Say hi." in untrained and "You are terse." in untrained and "<|im_start|>assistant" in untrained
    # and the whole row is the conversation as the template renders it
    assert tok.decode(row.ids) == tok.apply_chat_template(messages, add_generation_prompt=False)


def test_the_first_answer_token_starts_where_the_inference_prompt_ends(tok):
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    row = to_row(tok, {"messages": messages})
    prompt = tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)
    first = row.loss_mask.index(True)
    assert row.ids[:first] == prompt  # the engine's prompt tokens, exactly
    assert not any(row.loss_mask[:first]) and all(row.loss_mask[first:])


def test_tool_calls_and_reasoning_examples(tok, tmp_path):
    write_domains(tmp_path, seed=0, counts={"train": 4, "heldout": 2})
    for domain in ("tools", "arithmetic", "code"):
        for line in (tmp_path / domain / "train.jsonl").read_text().splitlines():
            ex = json.loads(line)
            row = to_row(tok, ex)
            text, spans = assistant_spans(tok, ex["messages"], ex.get("tools"), **ex.get("chat_template_kwargs", {}))
            assert _trained_text(tok, row) == [text[a:b] for a, b in spans]
            if domain == "tools":  # the call and the final answer are trained, the tool's result is not
                trained = "".join(_trained_text(tok, row))
                assert "<tool_call>" in trained and "<tool_response>" not in trained


def test_an_example_without_an_assistant_turn_is_refused(tok):
    with pytest.raises(ValueError, match="assistant"):
        to_row(tok, {"messages": [{"role": "user", "content": "hello"}]})


def test_the_masked_loss_counts_only_trained_targets():
    """Main head and every MTP depth: the loss is the mean cross-entropy over the targets inside the mask;
    changing a token that is only ever a target outside the mask changes nothing."""
    import torch

    from mimo.training.loss import LossConfig, compute_losses
    from tests.helpers import random_model, tiny_config

    torch.manual_seed(0)
    model = random_model(tiny_config(), seed=1)
    cfg = LossConfig(mtp_weights=(0.3, 0.3, 0.3), aux_coef=0.0)
    batch = torch.randint(0, 128, (2, 12 + cfg.extra))
    mask = torch.zeros_like(batch, dtype=torch.bool)
    mask[0, 5:9] = True
    mask[1, 10:] = True
    out = compute_losses(model, batch, cfg, loss_mask=mask)
    # by hand: the main head's targets t[i+1] for i < T, kept where mask[i+1]
    seq = batch.shape[1] - cfg.extra
    with torch.no_grad():
        logits = model(batch[:, :seq]).logits.float()
    tgt = batch[:, 1 : 1 + seq]
    keep = mask[:, 1 : 1 + seq]
    want = torch.nn.functional.cross_entropy(logits[keep], tgt[keep])
    assert out["main_loss"] == pytest.approx(float(want), rel=1e-5)
    # the last token of row 0 is never an input, only a target (of the deepest MTP head), and outside the mask
    other = batch.clone()
    other[0, -1] = (other[0, -1] + 1) % 128
    assert not mask[0, -1]
    again = compute_losses(model, other, cfg, loss_mask=mask)
    for k in ("main_loss", "mtp_loss_1", "mtp_loss_2", "mtp_loss_3"):
        assert again[k] == pytest.approx(out[k], rel=1e-6), k
    # a mask that keeps nothing gives zero, not nan, and still a graph
    none = compute_losses(model, batch, cfg, loss_mask=torch.zeros_like(mask))
    assert none["main_loss"] == 0.0 and none["loss"].requires_grad
    with pytest.raises(ValueError, match="loss_mask"):
        compute_losses(model, batch, cfg, loss_mask=mask[:, :-1])
