"""MTP blocks: the spec's formula by hand, three distinct blocks, and the token shift pinned."""

import math

import torch

from mimo.checkpoint import MiMoForCausalLM
from mimo.model import mtp_shift
from tests.helpers import random_model, tiny_config


def _norm(x, w, eps=1e-5):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def _hand_block(blk, cfg, emb, chain):
    """Spec §3.2 for one sequence [L, D], with attention written out position by position."""
    L, D = emb.shape
    z = torch.cat([_norm(emb, blk.enorm.weight), _norm(chain, blk.hnorm.weight)], -1) @ blk.eh_proj.weight.T
    a = blk.self_attn
    x = _norm(z, blk.input_layernorm.weight)
    H, KV, Dq, Dv = a.n_heads, a.n_kv, a.qk_dim, a.v_dim
    q = (x @ a.q_proj.weight.T).view(L, H, Dq)
    k = (x @ a.k_proj.weight.T).view(L, KV, Dq)
    v = (x @ a.v_proj.weight.T).view(L, KV, Dv) * cfg.attention_value_scale
    R = cfg.rotary_dim("sliding_attention")

    def rope(t, pos):
        out = t.clone()
        for j in range(R // 2):
            ang = pos / cfg.swa_rope_theta ** (2 * j / R)
            c, s = math.cos(ang), math.sin(ang)
            x1, x2 = t[..., j].clone(), t[..., j + R // 2].clone()
            out[..., j], out[..., j + R // 2] = x1 * c - x2 * s, x2 * c + x1 * s
        return out

    q = torch.stack([rope(q[i], i) for i in range(L)])
    k = torch.stack([rope(k[i], i) for i in range(L)])
    o = torch.zeros(L, H, Dv)
    for i in range(L):
        for h in range(H):
            g = h // (H // KV)
            js = [j for j in range(L) if j <= i and i - j < cfg.sliding_window]
            s = torch.stack([(q[i, h] @ k[j, g]) / math.sqrt(Dq) for j in js])
            e = torch.exp(s)
            denom = e.sum() + math.exp(a.attention_sink_bias[h].item())
            o[i, h] = sum(e[n] / denom * v[j, g] for n, j in enumerate(js))
    z = z + o.reshape(L, H * Dv) @ a.o_proj.weight.T
    m = blk.mlp
    y = _norm(z, blk.pre_mlp_layernorm.weight)
    z = z + (torch.nn.functional.silu(y @ m.gate_proj.weight.T) * (y @ m.up_proj.weight.T)) @ m.down_proj.weight.T
    return _norm(z, blk.final_layernorm.weight)


def test_each_block_matches_the_spec_formula():
    cfg = tiny_config(sliding_window=4)
    model = random_model(cfg, seed=7)
    tokens = torch.randint(0, cfg.vocab_size, (1, 11))
    with torch.no_grad():
        chain = model.trunk(tokens)
        for depth in (1, 2, 3):
            ids, prev = mtp_shift(tokens, chain, depth)
            pos = torch.arange(ids.shape[1])[None]
            got = model.mtp_block(depth, ids, prev, pos)
            blk = model.model.mtp.layers[depth - 1]
            want = _hand_block(blk, cfg, model.model.embed_tokens.weight[ids[0]], prev[0])
            assert (got[0] - want).abs().max() < 1e-5, depth
            chain = got


def test_three_blocks_are_distinct_modules(tmp_path):
    model = random_model(seed=1)
    model.save_pretrained(tmp_path)
    back = MiMoForCausalLM.from_pretrained(tmp_path)
    blocks = back.model.mtp.layers
    assert len(blocks) == 3
    ptrs = [{p.data_ptr() for p in b.parameters()} for b in blocks]
    assert not (ptrs[0] & ptrs[1]) and not (ptrs[1] & ptrs[2]) and not (ptrs[0] & ptrs[2])
    w = [b.eh_proj.weight for b in blocks]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    for i, b in enumerate(blocks):  # block i holds exactly the checkpoint's model.mtp.layers.i
        assert torch.equal(b.eh_proj.weight, model.model.mtp.layers[i].eh_proj.weight)
    # depth k runs block k-1: a different block gives a different answer
    tokens = torch.randint(0, 128, (1, 6))
    with torch.no_grad():
        h = back.trunk(tokens)
        ids, prev = mtp_shift(tokens, h, 2)
        pos = torch.arange(ids.shape[1])[None]
        out2 = back.mtp_block(2, ids, prev, pos)
        rope = back.rotary.tables(pos, h.dtype)["sliding_attention"]
        emb = back.model.embed_tokens(ids)
        assert torch.equal(out2, blocks[1](emb, prev, pos, rope))
        assert not torch.allclose(out2, blocks[0](emb, prev, pos, rope))


def test_mtp_shift_alignment_is_pinned():
    # t = 10, 11, ..., 17; chain rows carry their own position
    tokens = torch.arange(10, 18)[None]
    chain = torch.arange(8).float()[None, :, None]
    ids, prev = mtp_shift(tokens, chain, 1)
    # row i: embed t[i+1] with h0[i]; predicts t[i+2]
    assert ids.tolist() == [[11, 12, 13, 14, 15, 16, 17]]
    assert prev[0, :, 0].tolist() == [0, 1, 2, 3, 4, 5, 6]
    ids3, prev3 = mtp_shift(tokens, chain[:, :6], 3)  # depth 3 reads block 2's rows 0..4
    assert ids3.tolist() == [[13, 14, 15, 16, 17]] and prev3[0, :, 0].tolist() == [0, 1, 2, 3, 4]
    empty, _ = mtp_shift(tokens[:, :2], chain, 3)
    assert empty.shape == (1, 0)


def test_depth_out_of_range_and_no_mtp_model():
    model = random_model(tiny_config(num_nextn_predict_layers=0))
    try:
        model.mtp_block(1, torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, 32), torch.zeros(1, 1, dtype=torch.long))
    except ValueError as e:
        assert "0 MTP block" in str(e)
    else:
        raise AssertionError("expected a ValueError")
