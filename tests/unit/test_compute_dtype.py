"""Activations in fp32 over weights held narrower (bf16, FP8): what the engine does on a CPU.

The property that matters: a speculative verify of k+1 tokens computes, row for row, what plain decode
steps compute, so greedy speculative output equals plain greedy output. With bf16 activations (or a bf16
GEMM that rounds fp32 activations) the two paths round differently and near-ties flip (seen on mimo-nano:
3 of 13 held-out prompts at batch 8, k=3)."""

import pytest
import torch

from mimo import LLM, SamplingParams
from mimo.engine.llm import prepare_for_inference, resolve_compute_dtype
from mimo.ops import kernels
from mimo.ops.linear import EXACT_ROWS, linear
from mimo.ops.moe import experts_forward
from mimo.utils.paths import default_model_dir
from tests.helpers import random_model


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    if not kernels.load():
        pytest.skip("mimo's CPU kernels cannot build here")


def test_the_kernels_compute_each_row_alike_for_any_number_of_rows():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(96, 160, generator=g) * 0.05).bfloat16()
    x = torch.randn(EXACT_ROWS, 160, generator=g)
    with torch.no_grad():
        many = linear(x, w)
        for i in (0, 9, EXACT_ROWS - 1):
            assert torch.equal(linear(x[i : i + 1], w)[0], many[i])  # bitwise: the same sums in the same order
    assert (many - x @ w.float().T).abs().max() < 1e-4  # exact products, fp32 sums


def test_experts_compute_each_token_alike_for_any_number_of_tokens():
    g = torch.Generator().manual_seed(1)
    e, d, i, k, n = 8, 64, 32, 2, 24
    w = [(torch.randn(*s, generator=g) * 0.1).bfloat16() for s in ((e, i, d), (e, i, d), (e, d, i))]
    x = torch.randn(n, d, generator=g)
    experts = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(n)])
    weights = torch.rand(n, k, generator=g)
    with torch.no_grad():
        many = experts_forward(x, *w, weights, experts)
        for t in (0, 7, n - 1):
            assert torch.equal(experts_forward(x[t : t + 1], *w, weights[t : t + 1], experts[t : t + 1])[0], many[t])


def test_compute_dtype_is_float32_on_a_cpu_whatever_the_weights():
    model = random_model().to(torch.bfloat16)
    assert resolve_compute_dtype(model) == torch.float32
    assert resolve_compute_dtype(model, "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="compute_dtype"):
        resolve_compute_dtype(model, "int8")
    prepare_for_inference(model)
    assert model.dtype == torch.float32 and model.model.embed_tokens.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = model(torch.tensor([[1, 2, 3]]))
    assert out.logits.dtype == torch.float32


def test_mimo_nano_speculative_greedy_equals_plain_greedy_at_batch_8():
    """The shipped model, held in bf16, on prompts where bf16 activations flip near-ties."""
    from mimo.training.data import split_files, stdlib_files

    llm = LLM(str(default_model_dir()), max_num_seqs=8)
    assert llm.model.model.embed_tokens.weight.dtype == torch.bfloat16 and llm.model.dtype == torch.float32
    texts = []
    for _, path in split_files(stdlib_files())[1][:16]:
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    prompts = [ids[:96] for ids in map(llm.tokenizer.encode, texts) if len(ids) > 96][:8]
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    plain = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    spec = LLM(llm.model, tokenizer=llm.tokenizer, max_num_seqs=8, num_speculative_tokens=3)
    assert [o.outputs[0].token_ids for o in spec.generate(prompts, params)] == plain
