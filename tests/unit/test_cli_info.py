import json

from mimo.cli.main import main


def test_info_flash(capsys):
    assert main(["info", "--preset", "flash"]) == 0
    out = capsys.readouterr().out
    assert "total (no MTP):                       308.779B" in out
    assert "active per token:                     15.446B" in out
    assert "no embedding/head:  14.196B" in out
    assert "per MTP block:                        0.329B" in out
    assert "23040 B per token of context (9 layers)" in out
    # 8 tokens touch 256 * (1 - (248/256)^8) = 57.3 of 256 experts per layer, not 64
    assert "batch 8:  73.276B: 4.94x the bytes for 8x the tokens, so at most 1.62x" in out
    assert "MTP k=1: 24.942B (1 draft + a verify of 2 tokens)" in out
    assert "MTP k=3: 44.333B (3 drafts + a verify of 4 tokens): pays only above an acceptance length of 2.99" in out


def test_weights_read_per_step():
    import torch

    from mimo.config import preset
    from mimo.model.sizes import (
        experts_touched,
        parameter_counts,
        params_read_per_step,
        speculative_bound_speedup,
        speculative_params_per_step,
    )

    c = preset("bench")
    assert params_read_per_step(c, 1) == parameter_counts(c).active_no_embedding
    assert experts_touched(c, 1) == c.num_experts_per_tok
    # against a simulation of independent top-8-of-64 choices by 8 tokens
    g = torch.Generator().manual_seed(0)
    picks = torch.rand(4000, 8, c.n_routed_experts, generator=g).topk(c.num_experts_per_tok, dim=-1).indices
    distinct = torch.zeros(4000, c.n_routed_experts).scatter_(1, picks.flatten(1), 1.0).sum(1).mean().item()
    assert abs(distinct - experts_touched(c, 8)) < 0.2
    reads = [params_read_per_step(c, n) for n in (1, 2, 4, 8, 64, 10_000)]
    assert reads == sorted(reads) and reads[-1] <= parameter_counts(c).total - parameter_counts(c).embedding + 1
    # a speculative step that accepts nothing reads more than a plain step: slower at the bound
    assert speculative_params_per_step(c, 3) > params_read_per_step(c, 4) > params_read_per_step(c, 1)
    assert speculative_bound_speedup(c, 3, 1.0) < 1 < speculative_bound_speedup(c, 3, 4.0)


def test_info_json_and_model_dir(tmp_path, capsys):
    from tests.helpers import random_model

    random_model().save_pretrained(tmp_path)
    assert main(["info", "--model", str(tmp_path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["parameters"]["per_mtp_block"] > 0
    reads = d["params_read_per_step"]
    assert reads["batch_1"] < reads["batch_8"] and reads["batch_1"] < reads["speculative_k1"]


def test_info_errors(tmp_path, capsys):
    assert main(["info", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["info", "--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
