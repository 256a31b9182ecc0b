// mimo's CPU kernels for decode steps, where a step's cost is reading weights from memory.
//
// A decode step multiplies each weight matrix by a few vectors (one per token in the batch):
// mat-vecs, which MKL and inductor stream far below the memory bandwidth when the vectors are 8, or
// the matrices are experts gathered by index (benchmarks/README.md, "Why the code is the way it is"). These kernels stream each weight row once for all of its vectors,
// several rows in flight with the next block prefetched, threads splitting blocks of rows.
//
// mimo::linear_decode(x [M, K], w [N, K]) -> x @ w.T, for M <= 8 rows.
//
// mimo::moe_decode - the routed experts of a decode step, in two passes over the chosen weights:
//
//   pass 1, per expert e and block of rows f:  g[a, f] = <Wgate[e, f], x_t>,  u[a, f] = <Wup[e, f], x_t>
//   then                                        act[a, i] = w_a * silu(g[a, i]) * u[a, i]
//   pass 2, per expert e and block of rows d:  part[a, d] = <Wd[e, d], act[a]>
//   then                                        y[t, d] = sum over t's assignments a of part[a, d]
//
// where a runs over the (token, expert) assignments of expert e, so an expert chosen by several
// tokens is read once. Weights and activations in fp32 or bf16, sums in fp32; Python keeps torch
// ops for anything else (kernels/__init__.py).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int kLanes = 16;
constexpr int kRows = 4;      // weight rows streamed together (2 when 5-8 vectors share them)
constexpr int kMaxVecs = 8;   // vectors multiplied per pass over those rows
// A GCC/Clang vector type: one AVX-512 register, two AVX2 or four NEON ones. Unaligned loads are fine.
typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float)), aligned(sizeof(float))));

// The sum of a vector's lanes as a tree (a lane-by-lane loop is a 16-add dependency chain,
// which costs as much as the dot product of a 256-wide row). Shuffles where the compiler has
// them (gcc 12+, clang: 2-6% faster steps than the portable loop).
inline float lane_sum(vfloat v) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
  typedef float half __attribute__((vector_size(kLanes / 2 * sizeof(float))));
  typedef float quarter __attribute__((vector_size(kLanes / 4 * sizeof(float))));
  const half h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const quarter q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
#else
  float t[kLanes];
  std::memcpy(t, &v, sizeof(t));
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) t[l] += t[l + width];
  return t[0];
#endif
}

// Weights are fp32 or bf16 (the top half of an fp32: widening is a 16-bit shift); vectors and
// sums are fp32.
typedef uint16_t vbf16 __attribute__((vector_size(kLanes * sizeof(uint16_t)), aligned(sizeof(uint16_t))));
typedef uint32_t vu32 __attribute__((vector_size(kLanes * sizeof(uint32_t))));

inline vfloat load(const float* p) { return *reinterpret_cast<const vfloat*>(p); }
inline vfloat load(const uint16_t* p) {
  const vu32 bits = __builtin_convertvector(*reinterpret_cast<const vbf16*>(p), vu32) << 16;
  vfloat f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float scalar(float v) { return v; }
inline float scalar(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// out[m][r] = <rows[r * ld : + n], vec[m][0 : n]> for r < R, m < M.
template <typename T, int R, int M>
inline void dot_block(const T* rows, int64_t ld, const float* const* vec, int64_t n, float (*out)[kRows]) {
  vfloat acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = vfloat{};
  int64_t i = 0;
#pragma GCC unroll 4
  for (; i + kLanes <= n; i += kLanes) {
    vfloat v[M];
    for (int m = 0; m < M; ++m) v[m] = *reinterpret_cast<const vfloat*>(vec[m] + i);
    for (int r = 0; r < R; ++r) {
      __builtin_prefetch(rows + (r + R) * ld + i, 0, 3);  // the same line of the next block: +10-18% here
      const vfloat a = load(rows + r * ld + i);
      for (int m = 0; m < M; ++m) acc[r][m] += a * v[m];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      float s = lane_sum(acc[r][m]);
      for (int64_t j = i; j < n; ++j) s += scalar(rows[r * ld + j]) * vec[m][j];
      out[m][r] = s;
    }
}

// out[m * ldo + row] = <W[row, 0 : n], vec[m]> for rows [row0, row1) and M vectors, R rows at a time.
template <typename T, int R, int M>
void rows_times_vecs(const T* W, int64_t n, int64_t row0, int64_t row1, const float* const* vec, float* out, int64_t ldo) {
  float tmp[M][kRows];
  int64_t row = row0;
  for (; row + R <= row1; row += R) {
    dot_block<T, R, M>(W + row * n, n, vec, n, tmp);
    for (int m = 0; m < M; ++m)
      for (int r = 0; r < R; ++r) out[m * ldo + row + r] = tmp[m][r];
  }
  for (; row < row1; ++row) {
    dot_block<T, 1, M>(W + row * n, n, vec, n, tmp);
    for (int m = 0; m < M; ++m) out[m * ldo + row] = tmp[m][0];
  }
}

// The same for any number of vectors, up to 8 per pass over the rows (4 rows x up to 4 vectors,
// or 2 rows x 5-8 vectors: at most 16 accumulators). At 8 vectors, 2 rows x 8 beats two passes of
// 4 rows x 4 (benchmarks/README.md, "Why the code is the way it is").
template <typename T>
void rows_times_any(const T* W, int64_t n, int64_t row0, int64_t row1, const float* const* vec, int64_t nvec,
                    float* out, int64_t ldo) {
  for (int64_t m0 = 0; m0 < nvec; m0 += kMaxVecs) {
    const float* const* v = vec + m0;
    float* o = out + m0 * ldo;
    switch (std::min<int64_t>(kMaxVecs, nvec - m0)) {
      case 1: rows_times_vecs<T, 4, 1>(W, n, row0, row1, v, o, ldo); break;
      case 2: rows_times_vecs<T, 4, 2>(W, n, row0, row1, v, o, ldo); break;
      case 3: rows_times_vecs<T, 4, 3>(W, n, row0, row1, v, o, ldo); break;
      case 4: rows_times_vecs<T, 4, 4>(W, n, row0, row1, v, o, ldo); break;
      case 5: rows_times_vecs<T, 2, 5>(W, n, row0, row1, v, o, ldo); break;
      case 6: rows_times_vecs<T, 2, 6>(W, n, row0, row1, v, o, ldo); break;
      case 7: rows_times_vecs<T, 2, 7>(W, n, row0, row1, v, o, ldo); break;
      default: rows_times_vecs<T, 2, 8>(W, n, row0, row1, v, o, ldo); break;
    }
  }
}

// For every group g (one expert, weights W_g [N, n], and its vectors sorted[start[g] : start[g + 1]]):
// out[p, row] = <W_g[row], vec[p]>. Threads take contiguous ranges of (group, block of rows).
template <typename T>
void grouped_rows_times_vecs(const T* W, int64_t N, int64_t n, const std::vector<int64_t>& group_expert,
                             const std::vector<int64_t>& start, const std::vector<const float*>& vec, float* out) {
  const int64_t G = static_cast<int64_t>(group_expert.size());
  const int64_t blocks = (N + kRows - 1) / kRows;
  at::parallel_for(0, G * blocks, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t g = u0 / blocks; g < G && g * blocks < u1; ++g) {
      const int64_t row0 = std::max(u0 - g * blocks, int64_t{0}) * kRows;
      const int64_t row1 = std::min((u1 - g * blocks) * kRows, N);
      const int64_t p0 = start[g];
      rows_times_any(W + group_expert[g] * N * n, n, row0, row1, vec.data() + p0, start[g + 1] - p0, out + p0 * N, N);
    }
  });
}

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
    at::parallel_for(0, (N + kRows - 1) / kRows, 1, [&](int64_t b0, int64_t b1) {
      rows_times_any(W, K, b0 * kRows, std::min(b1 * kRows, N), vec.data(), M, yp, N);
    });
  });
  return y.to(x.scalar_type());
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
  const int64_t T = x.size(0), D = x.size(1), E = w_gate.size(0), I = w_gate.size(1);
  TORCH_CHECK(w_gate.size(2) == D && w_up.sizes() == w_gate.sizes() && w_down.size(0) == E && w_down.size(1) == D &&
                  w_down.size(2) == I,
              "moe_decode: weight shapes do not match x");
  TORCH_CHECK(experts.dim() == 2 && experts.size(0) == T && weights.sizes() == experts.sizes(),
              "moe_decode: experts and weights must be [T, k]");
  const int64_t K = experts.size(1), A = T * K;
  const at::Tensor ex = experts.to(at::kLong).contiguous();
  const at::Tensor wt = weights.to(at::kFloat).contiguous();
  const int64_t* ep = ex.data_ptr<int64_t>();
  const float* wp = wt.data_ptr<float>();

  // Assignments grouped by expert (counting sort): group g holds sorted[start[g] : start[g + 1]].
  std::vector<int64_t> count(E + 1, 0);
  for (int64_t a = 0; a < A; ++a) {
    TORCH_CHECK(ep[a] >= 0 && ep[a] < E, "moe_decode: expert id ", ep[a], " outside [0, ", E, ")");
    ++count[ep[a] + 1];
  }
  std::vector<int64_t> group_expert, start{0};
  for (int64_t e = 0; e < E; ++e) {
    if (count[e + 1] > 0) {
      group_expert.push_back(e);
      start.push_back(start.back() + count[e + 1]);
    }
    count[e + 1] += count[e];
  }
  std::vector<int64_t> sorted(A);
  for (int64_t a = 0; a < A; ++a) sorted[count[ep[a]]++] = a;

  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const float* xp = xf.const_data_ptr<float>();
  std::vector<float> act(A * I), part(A * D);
  std::vector<const float*> xvec(A), avec(A);
  for (int64_t p = 0; p < A; ++p) {
    xvec[p] = xp + (sorted[p] / K) * D;
    avec[p] = act.data() + p * I;
  }

  // Pass 1: the gate and up rows of each chosen expert; then act = w * silu(gate) * up.
  std::vector<float> g(A * I), u(A * I);
  with_weights(w_gate, [&](const auto* W) { grouped_rows_times_vecs(W, I, D, group_expert, start, xvec, g.data()); });
  with_weights(w_up, [&](const auto* W) { grouped_rows_times_vecs(W, I, D, group_expert, start, xvec, u.data()); });
  at::parallel_for(0, A, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float w = wp[sorted[p]];
      const float* gate = g.data() + p * I;
      const float* up = u.data() + p * I;
      for (int64_t f = 0; f < I; ++f) act[p * I + f] = w * gate[f] / (1.f + std::exp(-gate[f])) * up[f];
    }
  });
  // Pass 2: the down rows of each chosen expert -> part.
  with_weights(w_down, [&](const auto* dn) { grouped_rows_times_vecs(dn, D, I, group_expert, start, avec, part.data()); });

  // Each token's k contributions, in its own row.
  at::Tensor y = at::zeros({T, D}, xf.options());
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t p = 0; p < A; ++p) {
      const int64_t t = sorted[p] / K;
      if (t < t0 || t >= t1) continue;
      const float* src = part.data() + p * D;
      for (int64_t d = 0; d < D; ++d) yp[t * D + d] += src[d];
    }
  });
  return y.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY(mimo, m) {
  m.def("moe_decode(Tensor x, Tensor w_gate, Tensor w_up, Tensor w_down, Tensor weights, Tensor experts) -> Tensor");
  m.def("linear_decode(Tensor x, Tensor w) -> Tensor");
}

TORCH_LIBRARY_IMPL(mimo, CPU, m) {
  m.impl("moe_decode", &moe_decode);
  m.impl("linear_decode", &linear_decode);
}
