"""The commands that run a model: generate, eval, bench (on a tiny random model with a real tokenizer)."""

import io
import json

import pytest

from mimo.cli.main import main
from tests.helpers import tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def test_generate_streams_a_completion(model_dir, capsys):
    assert main(["generate", "--model", model_dir, "def fibonacci(n):", "--max-tokens", "8", "--mtp", "2",
                 "--stats"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("def fibonacci(n):") and len(out) > len("def fibonacci(n):\n")
    assert "tok/s" in err and "acceptance length" in err


def test_generate_errors(model_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "x"]) == 2
    assert "no model" in capsys.readouterr().err
    assert main(["generate", "--model", model_dir]) == 2
    assert "give a prompt" in capsys.readouterr().err
    assert main(["generate", "--model", model_dir, "x", "--temperature", "-1"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_eval_reports_every_figure(model_dir, tmp_path, capsys):
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--model", model_dir, "--max-files", "1", "--seq-len", "128", "--no-unigram",
                 "--max-prompts", "1", "--prefix-tokens", "16", "--new-tokens", "6", "--json-out", str(out_json)]) == 0
    d = json.loads(out_json.read_text())
    assert d["bits_per_byte"] > 0 and d["zlib_bits_per_byte"] > 0
    assert len(d["mtp_top1_accuracy"]) == 3
    assert set(d["acceptance_length"]) == {"1", "2", "3"}
    assert d["speculative_outputs_identical"] is True


def test_bench_prints_table_and_json(model_dir, capsys):
    assert main(["bench", "--model", model_dir, "--new-tokens", "4", "--batches", "1", "--prefill-tokens", "32"]) == 0
    out = capsys.readouterr().out
    d = json.loads(out.strip().splitlines()[-1])
    assert {r["mtp"] for r in d["decode"]} == {0, 3}
    spec = next(r for r in d["decode"] if r["mtp"] == 3)
    assert spec["speedup_vs_mtp0"] > 0 and 0 < spec["bandwidth_bound_speedup"] <= 4
    assert "bound: the batch-1 MTP speed-up" in out


def test_generate_reads_the_prompt_from_stdin(model_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("def fibonacci(n):\n    "))
    assert main(["generate", "--model", model_dir, "-", "--max-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("def fibonacci(n):\n    ")


def test_a_prompt_echoed_in_an_error_is_cut_to_its_first_line(model_dir, capsys):
    # A prompt that looks like an option is echoed by argparse: a whole file must not flood the terminal.
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", model_dir, "-x=1\n" + "print(x)\n" * 500, "--max-tokens", "4"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: -x=1 [...]" in err and "print(x)" not in err


def test_generate_shows_prefill_progress_for_a_long_prompt(model_dir, capsys):
    prompt = "def add(a, b):\n    return a + b\n" * 120  # several prefill chunks
    assert main(["generate", "--model", model_dir, prompt, "--max-tokens", "2"]) == 0
    assert "prefill" in capsys.readouterr().err


def test_bench_and_eval_print_the_machine_and_partial_results(model_dir, capsys):
    assert main(["bench", "--model", model_dir, "--new-tokens", "4", "--batches", "1", "--prefill-tokens", "32",
                 "--mtp", "1"]) == 0
    out = capsys.readouterr().out
    assert " on " in out.splitlines()[0] and "cores" in out.splitlines()[0]
    assert "prefill:" in out and json.loads(out.strip().splitlines()[-1])["machine"]


def test_quantize_writes_a_release_fp8_model_that_loads_fp8(model_dir, tmp_path, capsys):
    import torch

    from mimo.checkpoint import MiMoForCausalLM

    out = tmp_path / "fp8"
    assert main(["quantize", "--in", model_dir, "--out", str(out), "--block", "16"]) == 0
    assert "->" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "fp8"
    assert cfg["quantization_config"]["weight_block_size"] == [16, 16]
    assert (out / "tokenizer.json").exists()
    model = MiMoForCausalLM.from_pretrained(str(out))
    assert any(p.dtype == torch.float8_e4m3fn for p in model.parameters())
    wide = MiMoForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    a = wide(ids).logits.float()
    b = MiMoForCausalLM.from_pretrained(str(out), dtype=torch.float32)(ids).logits.float()  # widened at load
    assert (a - b).abs().max() < 0.15 * a.abs().max()  # quantization noise, not a different model
    # the generate command runs it as FP8
    assert main(["generate", "--model", str(out), "def f(x):", "--max-tokens", "4"]) == 0
    # refusals: same directory, non-empty target
    assert main(["quantize", "--in", model_dir, "--out", model_dir]) == 2
    assert "--out must not be --in" in capsys.readouterr().err
    assert main(["quantize", "--in", model_dir, "--out", str(out)]) == 2
    assert "already holds a model" in capsys.readouterr().err
