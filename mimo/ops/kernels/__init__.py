"""mimo's own CPU kernels for decode steps, built on first use with the machine's C++ compiler.

``decode.cpp`` defines ``torch.ops.mimo.moe_decode`` (a step's routed experts in one pass over
the chosen weights), ``torch.ops.mimo.linear_decode`` (a linear map of a few rows) and
``torch.ops.mimo.router_decode`` (the router's sigmoid scores in one call), for fp32 and bf16
weights; ``decode_fp8.cpp`` the same for FP8 (e4m3fn) weights with block scales,
``torch.ops.mimo.moe_decode_fp8`` and ``torch.ops.mimo.linear_decode_fp8``, and
``torch.ops.mimo.dequant_fp8``, which dequantizes one FP8 weight for prefill's GEMMs; ``attention.cpp``
``torch.ops.mimo.attention_decode``, a decode step's attention over the KV cache in one call; ``norm.cpp``
``torch.ops.mimo.rms_norm`` (torch's CPU RMSNorm costs ~8 us a row of 256). A decode
step's cost is reading weights: MKL's fp32 GEMM reads them at a third of the memory bandwidth
when 8 rows share them, inductor cannot fuse an expert gather into a mat-vec that streams as
fast as a hand-blocked loop, and no maintained library offers either for the CPU. The kernels are
batch invariant: a row's result has the same bits whatever the other rows of the call (benchmarks/README.md,
"Batch-invariant decode kernels"), which keeps speculative and plain decode steps' logits identical.

The build uses ``torch.utils.cpp_extension`` (g++ or clang, with OpenMP, the same toolchain
``torch.compile`` needs on a CPU). It is cached under ``~/.cache/torch_extensions/mimo`` (or
``$TORCH_EXTENSIONS_DIR/mimo``), keyed by the source, the flags, this CPU and torch's version.
``MIMO_KERNEL_ISA=avx2`` builds them without AVX-512 (``-mno-avx512f``, in a folder of its own),
as they run on AVX2-only CPUs: the kernels choose their vector width and register blocking per
instruction set, and this tests and measures the AVX2 code on an AVX-512 machine.
When it cannot build (no compiler, no OpenMP) or ``MIMO_CPU_KERNELS=0`` is set, :func:`ready`
says False and callers keep their torch-only paths, which compute the same results.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_SOURCES = [_HERE / f for f in ("decode.cpp", "decode_fp8.cpp", "attention.cpp", "norm.cpp")]  # and decode.h
_ok: bool | None = None  # None until load() has run

ISAS = ("native", "avx2")


def kernel_isa() -> str:
    """The instruction set the kernels are built for: ``$MIMO_KERNEL_ISA``, ``native`` (the default) or ``avx2``."""
    isa = os.environ.get("MIMO_KERNEL_ISA", "").strip().lower() or "native"
    if isa not in ISAS:
        raise ValueError(f"MIMO_KERNEL_ISA={isa!r}: expected one of {', '.join(ISAS)}")
    return isa


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _flags() -> list[str]:
    flags = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"]
    if kernel_isa() == "avx2":
        if not _x86():
            raise ValueError(f"MIMO_KERNEL_ISA=avx2 needs an x86-64 CPU, this is {platform.machine()}")
        flags.append("-mno-avx512f")  # and with it every AVX-512 extension; AVX2, FMA and F16C stay
    elif _x86():
        flags.append("-mprefer-vector-width=512")  # gcc picks 256-bit vectors on AVX-512 CPUs by default
    return flags


def _build_tag() -> str:
    """-march=native code runs only where it was built, and a build is tied to torch's ABI: key the
    cache by the CPU and torch's version as well as by the source and flags (which torch hashes)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    key = f"{torch.__version__} {platform.machine()} {platform.processor()} {flags} {kernel_isa()}"
    return kernel_isa() + "_" + hashlib.sha1(key.encode()).hexdigest()[:10]


def build_directory() -> Path:
    """Where this machine's build lives: one folder per CPU, instruction set (``MIMO_KERNEL_ISA``) and torch version."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    return root / "mimo" / f"mimo_kernels_{_build_tag()}"


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """Hold an flock on the build folder while torch checks or builds it. torch's own ``lock`` file outlives a
    process killed mid-build, and every later process then waits on it forever, silently; an flock is released
    by the kernel when its holder dies. So once we hold ours, no other process is building here, and a
    ``lock`` file left behind is stale: it is removed."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: torch's lock alone
        yield
        return
    with open(build_dir / "mimo.flock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            stale = build_dir / "lock"
            if stale.exists():
                logger.warning("removing %s, left by a process that stopped while building the kernels", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load() -> bool:
    """Build (once per machine) and load the kernels; True when ``torch.ops.mimo.*`` are usable."""
    global _ok
    if _ok is not None:
        return _ok
    _ok = False
    if os.environ.get("MIMO_CPU_KERNELS", "1") == "0":
        return False
    try:
        from torch.utils import cpp_extension

        try:
            import ninja  # the pip wheel: put its binary where cpp_extension looks for it

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
        build_dir = build_directory()
        name = build_dir.name
        build_dir.mkdir(parents=True, exist_ok=True)
        with _build_lock(build_dir):
            if not (build_dir / f"{name}.so").exists():  # say why the first step waits
                logger.warning("building mimo's CPU decode kernels for this machine (once, about 15 s)")
            cpp_extension.load(
                name=name,
                build_directory=str(build_dir),
                sources=[str(p) for p in _SOURCES],
                extra_cflags=_flags(),
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
            )
        _register_fake()
        _ok = True
    except Exception as e:  # no compiler, no OpenMP, an unknown platform: the torch path still works
        logger.warning("mimo's CPU kernels are unavailable (%s: %s); using torch ops instead", type(e).__name__, e)
    return _ok


def _register_fake() -> None:
    @torch.library.register_fake("mimo::moe_decode")
    def _(x, w_gate, w_up, w_down, weights, experts):
        return x.new_empty(x.shape)

    @torch.library.register_fake("mimo::linear_decode")
    def _(x, w):
        return x.new_empty(x.shape[0], w.shape[0])

    @torch.library.register_fake("mimo::router_decode")
    def _(x, w):
        return x.new_empty(x.shape[0], w.shape[0], dtype=torch.float32)

    @torch.library.register_fake("mimo::moe_decode_fp8")
    def _(x, w_gate, w_up, w_down, s_gate, s_up, s_down, block_r, block_k, weights, experts):
        return x.new_empty(x.shape)

    @torch.library.register_fake("mimo::linear_decode_fp8")
    def _(x, w, scale, row_index, block_k):
        return x.new_empty(x.shape[0], w.shape[0])

    @torch.library.register_fake("mimo::attention_decode")
    def _(q, k, v, q_pos, k_pos, window, sinks, scale):
        return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])

    @torch.library.register_fake("mimo::rms_norm")
    def _(x, weight, eps):
        return x.new_empty(x.shape)

    @torch.library.register_fake("mimo::dequant_fp8")
    def _(w, scale, row_index, block_k, dtype):
        return w.new_empty(w.shape, dtype=dtype)


DTYPES = (torch.float32, torch.bfloat16)


def ready(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether the kernels are loaded and can take activations ``x`` with these weights: contiguous CPU tensors,
    ``x`` fp32 or bf16, the weights all fp32 or all bf16 (the kernels sum in fp32 either way), no autograd.

    This never builds or loads them: whoever wants them (the engine's runner, ``mimo kernels --build``) calls
    :func:`load` first, so a small forward elsewhere never waits for a compiler."""
    if not _ok or torch.is_grad_enabled() or x.dtype not in DTYPES or (weights and weights[0].dtype not in DTYPES):
        return False
    return (x.device.type == "cpu" and x.is_contiguous() and
            all(w.device.type == "cpu" and w.dtype == weights[0].dtype and w.is_contiguous() for w in weights))


def ready_fp8(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether the FP8 kernels are loaded and can take these: contiguous ``float8_e4m3fn`` CPU weights, ``x``
    fp32 or bf16 on the CPU (or no ``x``: a dequantization), no autograd. Never builds or loads them."""
    if not _ok or torch.is_grad_enabled() or not hasattr(torch.ops.mimo, "linear_decode_fp8"):
        return False
    if x.dtype == torch.float8_e4m3fn:  # called with the weight alone
        weights, x = (x, *weights), None
    if x is not None and (x.device.type != "cpu" or x.dtype not in DTYPES or not x.is_contiguous()):
        return False
    return all(w.device.type == "cpu" and w.dtype == torch.float8_e4m3fn and w.is_contiguous() for w in weights)


def ready_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether ``torch.ops.mimo.attention_decode`` can take these: CPU tensors, all fp32 or all bf16, each
    contiguous in its last dimension (a transposed q is fine), no autograd. Never builds or loads the kernels."""
    if not _ok or torch.is_grad_enabled() or q.dtype not in DTYPES:
        return False
    return all(t.device.type == "cpu" and t.dtype == q.dtype and t.stride(-1) == 1 for t in (q, k, v))


def ready_norm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``torch.ops.mimo.rms_norm`` can take these: eager (inside ``torch.compile`` inductor fuses the norm
    into its neighbours, which a custom op would prevent), no autograd, contiguous CPU ``x`` in fp32 or bf16 with
    a weight of its dtype (or bf16 under fp32). Never builds or loads the kernels."""
    if not _ok or torch.is_grad_enabled() or torch.compiler.is_compiling() or x.dtype not in DTYPES:
        return False
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.is_contiguous() and weight.is_contiguous()
            and (weight.dtype == x.dtype or (x.dtype == torch.float32 and weight.dtype == torch.bfloat16)))


def built_isa() -> str:
    """What the loaded kernels were compiled for, e.g. ``avx2+f16c lanes=8 registers=16`` (needs :func:`load`)."""
    return torch.ops.mimo.kernel_isa()


def status() -> str:
    """One line on the kernels' state (for ``mimo kernels``)."""
    if os.environ.get("MIMO_CPU_KERNELS", "1") == "0":
        return "turned off by MIMO_CPU_KERNELS=0: decoding uses torch ops"
    try:
        path = build_directory()
    except ValueError as e:
        return str(e)
    built = (path / f"{path.name}.so").exists()
    return f"{'built' if built else 'not built yet'} for this machine ({kernel_isa()}) in {path}"
