#!/usr/bin/env bash
# Build llama-cpp-python from source into its own venv, for benchmarks/compare_peers.py.
# Separate from .venv because llama.cpp's converter misreads configs when transformers 5 is
# installed; it gets transformers 4.57 here. About 15-25 minutes on 2 cores. Never run by CI.
#
#   bash benchmarks/setup_llamacpp.sh [DIR]     (default DIR: .llamacpp)
#
# LLAMA_CMAKE_EXTRA adds CMake arguments. On a virtual machine that lists AMX in its CPU flags but faults on
# AMX tile instructions (seen here on an Intel Xeon: the native build dies with SIGILL in `tileloadd`, inside
# ggml_backend_amx_mul_mat, even after the process asked the kernel for AMX state), build for the ISA without AMX
# (GGML_NATIVE=OFF, the rest of what the CPU has named; a later -DGGML_NATIVE wins over the one below):
#   LLAMA_CMAKE_EXTRA="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON
#     -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON" bash benchmarks/setup_llamacpp.sh .llamacpp-noamx
#
# then: .venv/bin/python benchmarks/compare_peers.py --compile \
#         --llama-python DIR/venv/bin/python \
#         --llama-converter DIR/llama_cpp_python-$VERSION/vendor/llama.cpp/convert_hf_to_gguf.py
set -euo pipefail
VERSION=0.3.36
DIR=${1:-.llamacpp}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
cd "$DIR"
[ -d venv ] || "$PY" -m venv venv
venv/bin/pip install -q torch==2.13.0  # the CPU wheel on local disk; first, so nothing pulls a CUDA build
venv/bin/pip install -q numpy 'gguf==0.19.0' sentencepiece 'transformers==4.57.6' 'protobuf<5'
if [ ! -d "llama_cpp_python-$VERSION" ]; then
  venv/bin/pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d .
  tar xzf "llama_cpp_python-$VERSION.tar.gz"
fi
CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF ${LLAMA_CMAKE_EXTRA:-}" \
  venv/bin/pip install "llama_cpp_python-$VERSION.tar.gz"
echo "llama-python:    $PWD/venv/bin/python"
echo "llama-converter: $PWD/llama_cpp_python-$VERSION/vendor/llama.cpp/convert_hf_to_gguf.py"
