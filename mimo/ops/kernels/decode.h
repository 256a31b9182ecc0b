// The core shared by mimo's decode kernels (decode.cpp: fp32/bf16 weights, decode_fp8.cpp: FP8 weights):
// vector width and register blocking chosen per instruction set at compile time, weight loads that widen
// each weight type to fp32 in registers, and blocked dot products of a few weight rows with a few vectors.
//
// A decode step reads each weight row once for all of its vectors (1-8 tokens), several rows in flight with
// the next block prefetched, threads splitting blocks of rows. The inner loop keeps R rows x M vectors of
// fp32 accumulators in registers; if they do not fit, the compiler spills them to the stack and every
// multiply-add becomes a load, an FMA and a store, which is what made AVX2 steps slow and 8-token steps
// hardly faster than 1-token ones (benchmarks/README.md, "FP8 and AVX2 in the decode kernels").

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace mimo_kernels {

// One vfloat is one machine register: 16 lanes and 32 registers on AVX-512, 8 lanes and 16 registers on
// AVX/AVX2, 4 lanes and 32 registers on NEON, 4 lanes and 16 registers on bare x86-64 (SSE2).
#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr int kRegisters = 32;
#elif defined(__AVX__)
constexpr int kLanes = 8;
constexpr int kRegisters = 16;
#elif defined(__aarch64__)
constexpr int kLanes = 4;
constexpr int kRegisters = 32;
#else
constexpr int kLanes = 4;
constexpr int kRegisters = 16;
#endif

constexpr int kMaxVecs = 8;  // vectors multiplied per pass over a block of rows
constexpr int kSplit = 8;    // rows per unit of work handed to threads (whole blocks of 4, 2 or 1 rows)

// Rows streamed together for M vectors, so that the R x M accumulators, the operands held across the
// inner loop (the M vectors or the R converted rows, whichever is fewer) and a temporary fit the registers.
// 32 registers: 4 rows x 1-4 vectors, 2 rows x 5-8 (at 8 vectors 2 x 8 beats two passes of 4 x 4,
// benchmarks/README.md, "Why the code is the way it is"). 16 registers: 4 x 1-2, 3 x 3, 2 x 4-6, 1 x 7-8.
constexpr int rows_for(int m) {
  if (kRegisters >= 32) return m <= 4 ? 4 : 2;
  return m <= 2 ? 4 : m == 3 ? 3 : m <= 6 ? 2 : 1;
}

// A GCC/Clang vector type; unaligned loads are fine (aligned(sizeof(float))).
typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float)), aligned(sizeof(float))));
typedef uint16_t vu16 __attribute__((vector_size(kLanes * sizeof(uint16_t)), aligned(sizeof(uint16_t))));
typedef uint32_t vu32 __attribute__((vector_size(kLanes * sizeof(uint32_t)), aligned(sizeof(uint32_t))));

// The sum of a vector's lanes as a tree (a lane-by-lane loop is a dependency chain as long as the lanes,
// which costs as much as a short row's dot product). Shuffles where the compiler has them (gcc 12+,
// clang: 2-6% faster steps than the portable loop).
inline float lane_sum(vfloat v) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
  typedef float quarter __attribute__((vector_size(4 * sizeof(float))));
  quarter q;
  if constexpr (kLanes == 16) {
    typedef float half __attribute__((vector_size(8 * sizeof(float))));
    const half h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                   __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  } else if constexpr (kLanes == 8) {
    q = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
  } else {
    std::memcpy(&q, &v, sizeof(q));  // the vector is 4 lanes
  }
  return (q[0] + q[2]) + (q[1] + q[3]);
#else
  float t[kLanes];
  std::memcpy(t, &v, sizeof(t));
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) t[l] += t[l + width];
  return t[0];
#endif
}

// ------------------------------------------------------------------------------------------ weight types
// fp32; bf16 (the top half of an fp32: widening is a 16-bit shift); FP8 e4m3fn, widened to value * 2^-8
// (the callers fold 2^8 into the block scale). Vectors and sums are fp32.

inline vfloat load(const float* p) { return *reinterpret_cast<const vfloat*>(p); }
inline float scalar(float v) { return v; }

inline vfloat load(const uint16_t* p) {
  const vu32 bits = __builtin_convertvector(*reinterpret_cast<const vu16*>(p), vu32) << 16;
  vfloat f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float scalar(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// e4m3fn is s eeee mmm with exponent bias 7; fp16 is s eeeee mmmmmmmmmm with bias 15. Placing eeee mmm
// at fp16 bits 13..7 and the sign at bit 15 gives the fp16 of value * 2^(7-15) for every finite code,
// subnormals included (fp16 covers e4m3's range, and F16C widens fp16 subnormals exactly, whatever
// MXCSR's DAZ says). On 16-bit lanes: t = b << 7 puts the sign at bit 14 and eeee mmm at 13..7;
// t + (t & 0x4000) carries the sign up to bit 15 and clears bit 14. NaN codes (0x7f, 0xff) give +-480 * 2^-8:
// the loader rejects them.
inline float fp8_scaled(uint8_t b) {  // value * 2^-8: the same fp16 bits, widened without F16C
  const uint16_t h = static_cast<uint16_t>((b & 0x80) << 8 | (b & 0x7f) << 7);
  const int e = (h >> 10) & 31, m = h & 1023;  // e < 16: no fp16 infinity or NaN arises
  const float mag = e == 0 ? std::ldexp(static_cast<float>(m), -24) : std::ldexp(static_cast<float>(1024 + m), e - 25);
  return (h & 0x8000) ? -mag : mag;
}
struct Fp8Table {
  std::array<float, 256> v;
  Fp8Table() {
    for (int b = 0; b < 256; ++b) v[b] = fp8_scaled(static_cast<uint8_t>(b));
  }
};
inline const Fp8Table kFp8{};  // for tails and ISAs without F16C

inline float scalar(uint8_t b) { return kFp8.v[b]; }

inline vfloat load(const uint8_t* p) {
#if defined(__AVX512F__)
  __m256i t = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 7);
  t = _mm256_add_epi16(t, _mm256_and_si256(t, _mm256_set1_epi16(0x4000)));
  const __m512 f = _mm512_cvtph_ps(t);
  vfloat v;
  std::memcpy(&v, &f, sizeof(v));
  return v;
#elif defined(__F16C__) && defined(__AVX__)
  // Intrinsics: GCC 12 turns __builtin_convertvector from a _Float16 vector into one conversion per lane.
  __m128i t = _mm_slli_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), 7);
  t = _mm_add_epi16(t, _mm_and_si128(t, _mm_set1_epi16(0x4000)));
  const __m256 f = _mm256_cvtph_ps(t);
  vfloat v;
  std::memcpy(&v, &f, sizeof(v));
  return v;
#else
  vfloat f;
  for (int l = 0; l < kLanes; ++l) f[l] = kFp8.v[p[l]];
  return f;
#endif
}

// ------------------------------------------------------------------------------------------ dot products
// out[m][r] = <rows[r * ld : + n], vec[m][0 : n]> for r < R, m < M.
//
// With at least as many rows as vectors, the M vectors stay in registers while each row is loaded (and
// widened once for all vectors); with more vectors, the R widened rows stay and each vector is loaded in
// turn (an FMA can take it from memory). Either way the registers hold R x M + min(R, M) + 1 vfloats.
// The next block's rows are prefetched (+10-18% on the MoE kernel).
template <typename T, int R, int M>
__attribute__((always_inline)) inline void fma_at(const T* rows, int64_t ld, const float* const* vec, int64_t i,
                                                  vfloat (&acc)[R][M]) {
  if constexpr (R >= M) {
    vfloat v[M];
    for (int m = 0; m < M; ++m) v[m] = *reinterpret_cast<const vfloat*>(vec[m] + i);
    for (int r = 0; r < R; ++r) {
      const vfloat a = load(rows + r * ld + i);
      for (int m = 0; m < M; ++m) acc[r][m] += a * v[m];
    }
  } else {
    vfloat a[R];
    for (int r = 0; r < R; ++r) a[r] = load(rows + r * ld + i);
    for (int m = 0; m < M; ++m) {
      const vfloat v = *reinterpret_cast<const vfloat*>(vec[m] + i);
      for (int r = 0; r < R; ++r) acc[r][m] += a[r] * v;
    }
  }
}

template <typename T, int R, int M>
inline void dot_block(const T* rows, int64_t ld, const float* const* vec, int64_t n, float (*out)[4]) {
  vfloat acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = vfloat{};
  int64_t i = 0;
#pragma GCC unroll 4
  for (; i + kLanes <= n; i += kLanes) {
    // The same line of the next block, at every vector: once per 64-byte line, though fewer instructions, was
    // slower (benchmarks/README.md, "FP8 and AVX2 in the decode kernels").
    for (int r = 0; r < R; ++r) __builtin_prefetch(rows + (r + R) * ld + i, 0, 3);
    fma_at<T, R, M>(rows, ld, vec, i, acc);
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      float s = lane_sum(acc[r][m]);
      for (int64_t j = i; j < n; ++j) s += scalar(rows[r * ld + j]) * vec[m][j];
      out[m][r] = s;
    }
}

// out[m * ldo + row] = <W[row, 0 : n], vec[m]> for rows [row0, row1) and M vectors, R rows at a time.
template <typename T, int M>
void rows_times_vecs(const T* W, int64_t n, int64_t row0, int64_t row1, const float* const* vec, float* out,
                     int64_t ldo) {
  constexpr int R = rows_for(M);
  float tmp[M][4];
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

// The same for any number of vectors, up to kMaxVecs per pass over the rows.
template <typename T>
void rows_times_any(const T* W, int64_t n, int64_t row0, int64_t row1, const float* const* vec, int64_t nvec,
                    float* out, int64_t ldo) {
  for (int64_t m0 = 0; m0 < nvec; m0 += kMaxVecs) {
    const float* const* v = vec + m0;
    float* o = out + m0 * ldo;
    switch (std::min<int64_t>(kMaxVecs, nvec - m0)) {
      case 1: rows_times_vecs<T, 1>(W, n, row0, row1, v, o, ldo); break;
      case 2: rows_times_vecs<T, 2>(W, n, row0, row1, v, o, ldo); break;
      case 3: rows_times_vecs<T, 3>(W, n, row0, row1, v, o, ldo); break;
      case 4: rows_times_vecs<T, 4>(W, n, row0, row1, v, o, ldo); break;
      case 5: rows_times_vecs<T, 5>(W, n, row0, row1, v, o, ldo); break;
      case 6: rows_times_vecs<T, 6>(W, n, row0, row1, v, o, ldo); break;
      case 7: rows_times_vecs<T, 7>(W, n, row0, row1, v, o, ldo); break;
      default: rows_times_vecs<T, 8>(W, n, row0, row1, v, o, ldo); break;
    }
  }
}

// f(g, row0, row1) for every group g < G (one expert each) over its N rows, threads taking contiguous ranges
// of (group, unit of kSplit rows).
template <typename F>
void for_group_rows(int64_t G, int64_t N, F&& f) {
  const int64_t units = (N + kSplit - 1) / kSplit;
  at::parallel_for(0, G * units, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t g = u0 / units; g < G && g * units < u1; ++g) {
      const int64_t row0 = std::max(u0 - g * units, int64_t{0}) * kSplit;
      const int64_t row1 = std::min((u1 - g * units) * kSplit, N);
      f(g, row0, row1);
    }
  });
}

// ------------------------------------------------------------------------------------------ routed experts
// The (token, expert) assignments of a decode step grouped by expert (a counting sort): group g is expert
// group_expert[g] and holds the assignments sorted[start[g] : start[g + 1]] (a = token * k + slot).
struct Groups {
  std::vector<int64_t> group_expert, start{0}, sorted;
};

inline Groups group_by_expert(const int64_t* ep, int64_t A, int64_t E, const char* op) {
  std::vector<int64_t> count(E + 1, 0);
  for (int64_t a = 0; a < A; ++a) {
    TORCH_CHECK(ep[a] >= 0 && ep[a] < E, op, ": expert id ", ep[a], " outside [0, ", E, ")");
    ++count[ep[a] + 1];
  }
  Groups gr;
  for (int64_t e = 0; e < E; ++e) {
    if (count[e + 1] > 0) {
      gr.group_expert.push_back(e);
      gr.start.push_back(gr.start.back() + count[e + 1]);
    }
    count[e + 1] += count[e];
  }
  gr.sorted.resize(A);
  for (int64_t a = 0; a < A; ++a) gr.sorted[count[ep[a]]++] = a;
  return gr;
}

// The routed experts of a decode step, whatever the weight type:
//
//   pass 1, per expert e and block of rows f:  g[a, f] = <Wgate[e, f], x_t>,  u[a, f] = <Wup[e, f], x_t>
//   then                                        act[a, i] = w_a * silu(g[a, i]) * u[a, i]
//   pass 2, per expert e and block of rows d:  part[a, d] = <Wd[e, d], act[a]>
//   then                                        y[t, d] = sum over t's assignments a of part[a, d]
//
// where a runs over the assignments of expert e, so an expert chosen by several tokens is read once.
// gate_up(groups, xvec, g, u) and down(groups, avec, part) run the two passes' products.
template <typename GateUp, typename Down>
at::Tensor moe_decode_with(const at::Tensor& x, int64_t E, int64_t I, const at::Tensor& weights,
                           const at::Tensor& experts, const char* op, GateUp&& gate_up, Down&& down) {
  TORCH_CHECK(experts.dim() == 2 && experts.size(0) == x.size(0) && weights.sizes() == experts.sizes(), op,
              ": experts and weights must be [T, k]");
  const int64_t T = x.size(0), D = x.size(1), K = experts.size(1), A = T * K;
  const at::Tensor ex = experts.to(at::kLong).contiguous();
  const at::Tensor wt = weights.to(at::kFloat).contiguous();
  const float* wp = wt.const_data_ptr<float>();
  const Groups gr = group_by_expert(ex.const_data_ptr<int64_t>(), A, E, op);

  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const float* xp = xf.const_data_ptr<float>();
  std::vector<float> act(A * I), part(A * D);
  std::vector<const float*> xvec(A), avec(A);
  for (int64_t p = 0; p < A; ++p) {
    xvec[p] = xp + (gr.sorted[p] / K) * D;
    avec[p] = act.data() + p * I;
  }

  // Pass 1: the gate and up rows of each chosen expert; then act = w * silu(gate) * up.
  std::vector<float> g(A * I), u(A * I);
  gate_up(gr, xvec, g.data(), u.data());
  at::parallel_for(0, A, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float w = wp[gr.sorted[p]];
      const float* gate = g.data() + p * I;
      const float* up = u.data() + p * I;
      for (int64_t f = 0; f < I; ++f) act[p * I + f] = w * gate[f] / (1.f + std::exp(-gate[f])) * up[f];
    }
  });
  // Pass 2: the down rows of each chosen expert -> part.
  down(gr, avec, part.data());

  // Each token's k contributions, in its own row.
  at::Tensor y = at::zeros({T, D}, xf.options());
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t p = 0; p < A; ++p) {
      const int64_t t = gr.sorted[p] / K;
      if (t < t0 || t >= t1) continue;
      const float* src = part.data() + p * D;
      for (int64_t d = 0; d < D; ++d) yp[t * D + d] += src[d];
    }
  });
  return y.to(x.scalar_type());
}

// Activations: contiguous fp32 or bf16 CPU tensors.
inline void check_activations(const at::Tensor& t, const char* op) {
  TORCH_CHECK((t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16) && t.is_contiguous() &&
                  t.device().is_cpu(),
              op, ": x must be a contiguous float32 or bfloat16 CPU tensor, got ", t.scalar_type(),
              t.is_contiguous() ? "" : " (not contiguous)", " on ", t.device());
}

}  // namespace mimo_kernels
