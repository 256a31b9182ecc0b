// mimo's CPU kernels for decode steps, where a step's cost is reading weights from memory.
//
// A decode step multiplies each weight matrix by a few vectors (one per token in the batch):
// mat-vecs, which MKL and inductor stream far below the memory bandwidth when the vectors are 8, or
// the matrices are experts gathered by index (benchmarks/README.md, "Why the code is the way it is").
// These kernels stream each weight row once for all of its vectors (decode.h).
//
// mimo::linear_decode(x [M, K], w [N, K]) -> x @ w.T, for M <= 8 rows.
// mimo::moe_decode - the routed experts of a decode step, in two passes over the chosen weights (decode.h).
//
// Weights and activations in fp32 or bf16, sums in fp32; FP8 weights are decode_fp8.cpp's. Python keeps
// torch ops for anything else (kernels/__init__.py).

#include <torch/library.h>

#include "decode.h"

namespace {

using namespace mimo_kernels;

void check_tensor(const at::Tensor& t, const char* what) {
  TORCH_CHECK((t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16) && t.is_contiguous() &&
                  t.device().is_cpu(),
              what, ": contiguous float32 or bfloat16 CPU tensors only");
}

// Calls f with the weight data as const float* (fp32) or const uint16_t* (bf16 bits).
template <typename F>
void with_weights(const at::Tensor& w, F&& f) {
  if (w.scalar_type() == at::kFloat) {
    f(w.const_data_ptr<float>());
  } else {
    f(reinterpret_cast<const uint16_t*>(w.const_data_ptr<at::BFloat16>()));
  }
}

at::Tensor linear_decode(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear_decode: x [M, K] and w [N, K]");
  check_tensor(x, "linear_decode");
  check_tensor(w, "linear_decode");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor y = at::empty({M, N}, xf.options());
  std::vector<const float*> vec(M);
  for (int64_t m = 0; m < M; ++m) vec[m] = xf.const_data_ptr<float>() + m * K;
  float* yp = y.data_ptr<float>();
  with_weights(w, [&](const auto* W) {
    at::parallel_for(0, (N + kSplit - 1) / kSplit, 1, [&](int64_t b0, int64_t b1) {
      rows_times_any(W, K, b0 * kSplit, std::min(b1 * kSplit, N), vec.data(), M, yp, N);
    });
  });
  return y.to(x.scalar_type());
}

// The router's scores, sigmoid(x @ w.T), for a few tokens: the product as linear_decode computes it, then the
// sigmoid element by element, in one call (eager decode pays a dispatch per operation, and torch.sigmoid takes
// another code path for a handful of values than for many, so its last bits depended on the number of tokens).
at::Tensor router_decode(const at::Tensor& x, const at::Tensor& w) {
  at::Tensor y = linear_decode(x.to(at::kFloat), w);
  float* p = y.data_ptr<float>();
  for (int64_t i = 0, n = y.numel(); i < n; ++i) p[i] = 1.f / (1.f + std::exp(-p[i]));
  return y;
}

at::Tensor moe_decode(const at::Tensor& x, const at::Tensor& w_gate, const at::Tensor& w_up, const at::Tensor& w_down,
                      const at::Tensor& weights, const at::Tensor& experts) {
  TORCH_CHECK(x.dim() == 2 && w_gate.dim() == 3 && w_up.dim() == 3 && w_down.dim() == 3,
              "moe_decode: x [T, D], weights [E, I, D], [E, I, D] and [E, D, I]");
  check_tensor(x, "moe_decode");
  check_tensor(w_gate, "moe_decode");
  check_tensor(w_up, "moe_decode");
  check_tensor(w_down, "moe_decode");
  TORCH_CHECK(w_gate.scalar_type() == w_down.scalar_type() && w_up.scalar_type() == w_down.scalar_type(),
              "moe_decode: the expert weights must have one dtype");
  const int64_t D = x.size(1), E = w_gate.size(0), I = w_gate.size(1);
  TORCH_CHECK(w_gate.size(2) == D && w_up.sizes() == w_gate.sizes() && w_down.size(0) == E && w_down.size(1) == D &&
                  w_down.size(2) == I,
              "moe_decode: weight shapes do not match x");
  const at::Tensor* w[3] = {&w_gate, &w_up, &w_down};
  const int64_t cols[3] = {D, D, I}, size = I * D, elem = w_gate.element_size();
  auto rows = [&](int proj, int64_t e, int64_t row0, int64_t row1, const float* const* vec, int64_t nvec, float* out,
                  int64_t ldo, const void* after) {
    with_weights(*w[proj], [&](const auto* W) {
      using T = std::remove_cv_t<std::remove_pointer_t<decltype(W)>>;
      rows_times_any(W + e * size, cols[proj], row0, row1, vec, nvec, out, ldo, static_cast<const T*>(after));
    });
  };
  auto row_at = [&](int proj, int64_t e, int64_t row) -> const void* {
    return static_cast<const char*>(w[proj]->const_data_ptr()) + (e * size + row * cols[proj]) * elem;
  };
  return moe_decode_with(x, E, I, weights, experts, "moe_decode", rows, row_at);
}

// What the kernels were compiled for (mimo kernels, benchmarks/kernel_isa.py, the tests of both builds).
std::string kernel_isa() {
  std::string isa =
#if defined(__AVX512F__)
      "avx512";
#elif defined(__AVX2__)
      "avx2";
#elif defined(__AVX__)
      "avx";
#elif defined(__aarch64__)
      "neon";
#else
      "generic";
#endif
#if defined(__F16C__)
  isa += "+f16c";
#endif
  return isa + " lanes=" + std::to_string(kLanes) + " registers=" + std::to_string(kRegisters);
}

}  // namespace

TORCH_LIBRARY(mimo, m) {
  m.def("moe_decode(Tensor x, Tensor w_gate, Tensor w_up, Tensor w_down, Tensor weights, Tensor experts) -> Tensor");
  m.def("linear_decode(Tensor x, Tensor w) -> Tensor");
  m.def("router_decode(Tensor x, Tensor w) -> Tensor");
  m.def("kernel_isa() -> str", &kernel_isa);
}

TORCH_LIBRARY_IMPL(mimo, CPU, m) {
  m.impl("moe_decode", &moe_decode);
  m.impl("linear_decode", &linear_decode);
  m.impl("router_decode", &router_decode);
}
