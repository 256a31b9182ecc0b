"""``LLM``: offline generation in vLLM's shape — ``LLM(model_dir).generate(prompts, SamplingParams(...))``."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from mimo.checkpoint import GenerationConfig, MiMoForCausalLM
from mimo.engine.config import EngineConfig
from mimo.engine.engine import Engine
from mimo.engine.outputs import RequestOutput, StreamDelta
from mimo.engine.params import SamplingParams
from mimo.model.causal_lm import CausalLM
from mimo.tokenizer import Tokenizer
from mimo.utils import runtime


def resolve_compute_dtype(model: CausalLM, compute_dtype: str | torch.dtype = "auto") -> torch.dtype:
    """``"auto"``: float32 on a CPU (weights stay as held; see :meth:`CausalLM.set_compute_dtype`), the
    embedding's dtype elsewhere (a GPU computes bf16 natively)."""
    if compute_dtype == "auto":
        return torch.float32 if model.device.type == "cpu" else model.model.embed_tokens.weight.dtype
    if isinstance(compute_dtype, str):
        if compute_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"compute_dtype must be auto, float32, bfloat16 or float16, got {compute_dtype!r}")
        return getattr(torch, compute_dtype)
    return compute_dtype


def prepare_for_inference(model: CausalLM, attention_backend: str = "sdpa",
                          compute_dtype: str | torch.dtype = "auto") -> CausalLM:
    """The model as the engine runs it best: no gradients, the given attention backend, activations in the
    compute dtype (:func:`resolve_compute_dtype`), q/k/v and gate/up fused (:meth:`CausalLM.fuse_projections`).
    Returns the same model, changed in place."""
    model.requires_grad_(False)
    model.set_compute_dtype(resolve_compute_dtype(model, compute_dtype))
    model.set_attention_backend(attention_backend)
    model.fuse_projections()
    return model


def _dtype_name(dtype: str | torch.dtype) -> str:
    return str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype


class LLM:
    """A model directory (or a loaded model) and an engine over it, in vLLM's shape.

    ``LLM`` is an entry point: it sets the process up for inference (:func:`mimo.utils.runtime.configure`:
    subnormal flushing, heap reuse) and prepares the model (:func:`prepare_for_inference`; a model object
    passed in is changed in place). Engine settings are :class:`EngineConfig` fields, given as keywords
    (``num_speculative_tokens``, ``max_num_seqs``, ``max_model_len``, ``prefill_chunk``, ``compile``,
    ``device``, ``cpu_kernels``) or as ``engine_config``. From a directory, ``dtype="auto"`` (the default) keeps
    every weight as stored (the release's FP8 stays FP8; ``"float32"``/``"bfloat16"`` convert), ``compute_dtype``
is the activations' (``"auto"``: float32 on a CPU over whatever the weights are held in), ``mmap=False``
    copies the weights into memory instead of mapping the files, and the end-of-sequence ids of its
    ``generation_config.json`` end sequences too (:attr:`generation_config`)."""

    def __init__(
        self,
        model: str | os.PathLike | MiMoForCausalLM,
        dtype: str | torch.dtype = "auto",
        tokenizer: Tokenizer | None = None,
        attention_backend: str = "sdpa",
        engine_config: EngineConfig | None = None,
        mmap: bool = True,
        compute_dtype: str | torch.dtype = "auto",
        **engine_settings: Any,
    ) -> None:
        config = engine_config or EngineConfig()
        unknown = set(engine_settings) - EngineConfig.fields()
        if unknown:
            raise TypeError(f"LLM() got unknown setting(s) {', '.join(sorted(unknown))}; engine settings are "
                            f"{', '.join(sorted(EngineConfig.fields()))}")
        config = config.replace(**engine_settings)
        self._close: weakref.finalize | None = None
        if config.tensor_parallel_size > 1:
            self._init_parallel(model, dtype, tokenizer, attention_backend, config, mmap, compute_dtype)
            return
        runtime.configure()
        self.generation_config = GenerationConfig()
        if isinstance(model, str | os.PathLike):
            path = os.fspath(model)
            self.generation_config = GenerationConfig.from_pretrained(path)
            self.model = MiMoForCausalLM.from_pretrained(path, dtype=dtype, mmap=mmap)
            if tokenizer is None and os.path.exists(os.path.join(path, "tokenizer.json")):
                tokenizer = Tokenizer.from_pretrained(path)
        else:
            self.model = model
        if config.device is not None:
            self.model.to(config.device)
        prepare_for_inference(self.model, attention_backend, compute_dtype)
        self.tokenizer = tokenizer
        self.last_output: RequestOutput | None = None  # the final output of the last stream()
        self.engine = Engine(self.model, tokenizer, config, eos_token_ids=self.generation_config.eos_token_ids)

    def _init_parallel(self, model, dtype, tokenizer, attention_backend, config, mmap, compute_dtype) -> None:
        """Rank 0 of ``config.tensor_parallel_size`` ranks (started here, or by torchrun); on another rank of a
        torchrun group, this serves as a worker until rank 0 stops, then exits the process."""
        from mimo.config import MiMoConfig
        from mimo.engine import ranks
        from mimo.engine.engine import max_model_len
        from mimo.parallel import group as groups

        if not isinstance(model, str | os.PathLike):
            raise ValueError("tensor_parallel_size > 1 loads each rank's part from the files: give LLM the model's "
                             "directory, not a loaded model")
        path = os.fspath(model)
        world = config.tensor_parallel_size
        spec = ranks.RankSpec(path=path, dtype=_dtype_name(dtype), compute_dtype=_dtype_name(compute_dtype),
                              attention_backend=attention_backend, mmap=mmap, config=config,
                              max_model_len=max_model_len(MiMoConfig.from_pretrained(path), config))
        env = groups.from_environment()
        if env is not None and env[0] != 0:  # torchrun: this process is a worker
            runtime.configure(threads=ranks.threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", world))))
            groups.init(env[0], env[1], groups.backend_for(config.device or "cpu"), timeout_s=ranks.IDLE_TIMEOUT_S,
                        device=groups.rank_device(config.device, env[0]))
            try:
                ranks.run_worker(spec, *env)
            finally:  # gloo's threads must stop before the interpreter does (else: "terminate called", SIGABRT)
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.destroy_process_group()
            raise SystemExit(0)
        # The host's cores shared out between the ranks on it; given back when the group closes.
        before = runtime.configure(threads=ranks.threads_per_rank(world if env is None else
                                                                  int(os.environ.get("LOCAL_WORLD_SIZE", world))))
        pg, control, watch = ranks.launch(world, spec)
        self.generation_config = GenerationConfig.from_pretrained(path)
        if tokenizer is None and os.path.exists(os.path.join(path, "tokenizer.json")):
            tokenizer = Tokenizer.from_pretrained(path)
        self.model = ranks.load_rank(spec, pg)
        runner = ranks.RankZeroRunner(self.model, config, spec.max_model_len, control=control)
        self.tokenizer = tokenizer
        self.last_output = None
        self.engine = Engine(self.model, tokenizer, config, eos_token_ids=self.generation_config.eos_token_ids,
                             runner=runner)

        def close() -> None:
            runner.stop()
            if watch is not None:
                watch.close()
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            runtime.restore(before)

        # Run once: by close(), when this LLM is collected, or at exit (the closure holds no reference to self).
        self._close = weakref.finalize(self, close)

    def close(self) -> None:
        """Stop the worker ranks of a parallel LLM and leave the process group (nothing to do otherwise). Also
        done when the LLM is collected or the process exits; an LLM is a context manager too."""
        if self._close is not None:
            self._close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(
        self,
        prompts: str | list[int] | list[str | list[int]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order. A single string or a single token-id list is one prompt."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        params = sampling_params or SamplingParams()
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(plist)} sampling params")
        ids: list[str] = []
        try:
            for p, sp in zip(prompts, plist):
                ids.append(self.engine.add_request(p, sp))
        except BaseException:  # all or none: a bad prompt or constraint leaves nothing queued for a later call
            for i in ids:
                self.engine.release(i)
            raise
        bar = tqdm(total=len(ids), desc="generating", disable=not use_tqdm)
        done: set[str] = set()
        try:
            while self.engine.has_unfinished():
                for d in self.engine.step():
                    if d.finish_reason and d.request_id not in done and self.engine.output(d.request_id).finished:
                        done.add(d.request_id)
                        bar.update(1)
            return [self.engine.output(i) for i in ids]
        finally:
            bar.close()
            for i in ids:
                self.engine.release(i)

    def stream(self, prompt: str | list[int], sampling_params: SamplingParams | None = None,
               on_prefill: Callable[[int, int], None] | None = None) -> Iterator[StreamDelta]:
        """Deltas (new text and token ids) for one request as they are generated.

        ``on_prefill(done, total)`` is called after each step that worked on the prompt (a long prompt is
        prefilled in chunks, one per step), so a caller can show progress before the first token."""
        rid = self.engine.add_request(prompt, sampling_params or SamplingParams())
        reported = 0
        try:
            while not self.engine.output(rid).finished:
                deltas = self.engine.step()
                if on_prefill is not None and reported is not None:
                    done, total = self.engine.prefill_progress(rid)
                    if done > reported:
                        on_prefill(done, total)
                    reported = done if done < total else None  # prefill over: no more calls
                for d in deltas:
                    if d.request_id == rid:
                        yield d
            self.last_output = self.engine.output(rid)
        finally:
            self.engine.release(rid)
