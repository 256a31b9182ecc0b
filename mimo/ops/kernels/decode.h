// The core shared by mimo's decode kernels (decode.cpp: fp32/bf16 weights, decode_fp8.cpp: FP8 weights):
// vector width and register blocking chosen per instruction set at compile time, weight loads that widen
// each weight type to fp32 in registers, and blocked dot products of a few weight rows with a few vectors.
//
// A decode step reads each weight row once for all of its vectors (1-8 tokens), R rows in flight from R
// stretches of a thread's rows, each stretch prefetched kAhead bytes ahead. The inner loop keeps R rows x M
// vectors of fp32 accumulators in registers; if they do not fit, the compiler spills them to the stack and
// every multiply-add becomes a load, an FMA and a store, which is what made AVX2 steps slow and 8-token steps
// hardly faster than 1-token ones (benchmarks/README.md, "FP8 and AVX2 in the decode kernels").

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__F16C__) || defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
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

// c + a * b, fused wherever the CPU can fuse: written out rather than left to -ffp-contract, which fuses or
// not as each instantiation's code happens to come out, so that every product is summed the same way in every
// kernel shape (rows, vectors), which the batch invariance of the decode kernels rests on (see chunked()).
inline vfloat fmadd(vfloat a, vfloat b, vfloat c) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__AVX__) && defined(__FMA__)
  return (vfloat)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif defined(__aarch64__)
  return (vfloat)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
#else
  return c + a * b;  // no fused multiply-add on this CPU: nothing to fuse, the same everywhere
#endif
}
inline float fmadd(float a, float b, float c) {
#if defined(__FMA__) || defined(__aarch64__)
  return std::fma(a, b, c);
#else
  return c + a * b;
#endif
}

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
// fp32 -> bf16 bits, rounding to nearest even as torch's .to(torch.bfloat16) does (a NaN stays a NaN).
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// <a[0:n], x[0:n]>: a (fp32 or bf16) widened to fp32, x fp32, summed in fp32 a vector at a time.
template <typename T>
inline float dot(const T* a, const float* x, int64_t n) {
  vfloat acc{};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc = fmadd(load(a + i), load(x + i), acc);
  float s = lane_sum(acc);
  for (; i < n; ++i) s = fmadd(scalar(a[i]), x[i], s);
  return s;
}

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

// FP8 in chunks: 4 vectors from 4 x kLanes codes (a 64-byte line on AVX-512, 32 bytes on AVX2) with fewer
// instructions than 4 loads above. The chunk's bytes as 16-bit words, each holding an even code (low byte) and
// an odd one (high byte): odd = (t >>arith 1) & 0xbf80 and even = ((t << 8) >>arith 1) & 0xbf80 are the fp16
// bits of the codes (sign at bit 15, eeee mmm at 13..7, as above) with no widening of bytes to words. The
// vectors hold the chunk's codes in the order chunk_source gives, so the vectors they meet must be permuted
// the same way (the FP8 kernels scale the vectors into a scratch copy anyway, decode_fp8.cpp).
#if (defined(__AVX512F__) || (defined(__AVX2__) && defined(__F16C__)))
constexpr bool kFp8Chunks = true;
#else
constexpr bool kFp8Chunks = false;
#endif
constexpr int kChunk = 4 * kLanes;  // codes per chunk

// The position within its chunk of the code that lands in lane l of the chunk's vector q (q < 4).
constexpr int chunk_source(int q, int l) { return 2 * l + (q & 1) * 2 * kLanes + (q >> 1); }

#if defined(__AVX512F__)
inline void load_even_odd(const uint8_t* p, vfloat (&w)[2], bool odd) {
  const __m512i t = _mm512_loadu_si512(p);
  const __m512i h = _mm512_and_si512(_mm512_srai_epi16(odd ? t : _mm512_slli_epi16(t, 8), 1),
                                     _mm512_set1_epi16(static_cast<short>(0xbf80)));
  const __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h)), hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
  std::memcpy(&w[0], &lo, sizeof(vfloat));
  std::memcpy(&w[1], &hi, sizeof(vfloat));
}
#elif defined(__AVX2__) && defined(__F16C__)
inline void load_even_odd(const uint8_t* p, vfloat (&w)[2], bool odd) {
  const __m256i t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i h = _mm256_and_si256(_mm256_srai_epi16(odd ? t : _mm256_slli_epi16(t, 8), 1),
                                     _mm256_set1_epi16(static_cast<short>(0xbf80)));
  const __m256 lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h)), hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
  std::memcpy(&w[0], &lo, sizeof(vfloat));
  std::memcpy(&w[1], &hi, sizeof(vfloat));
}
#endif

// ------------------------------------------------------------------------------------------ dot products
// out[m][r] = <rows[r * ld : + n], vec[m][0 : n]> for r < R, m < M.
//
// With at least as many rows as vectors, the M vectors stay in registers while each row is loaded (and
// widened once for all vectors); with more vectors, the R widened rows stay and each vector is loaded in
// turn (an FMA can take it from memory). Either way the registers hold R x M + min(R, M) + 1 vfloats.
template <typename T, int R, int M>
__attribute__((always_inline)) inline void fma_at(const T* rows, int64_t ld, const float* const* vec, int64_t i,
                                                  vfloat (&acc)[R][M]) {
  if constexpr (R >= M) {
    vfloat v[M];
    for (int m = 0; m < M; ++m) v[m] = *reinterpret_cast<const vfloat*>(vec[m] + i);
    for (int r = 0; r < R; ++r) {
      const vfloat a = load(rows + r * ld + i);
      for (int m = 0; m < M; ++m) acc[r][m] = fmadd(a, v[m], acc[r][m]);
    }
  } else {
    vfloat a[R];
    for (int r = 0; r < R; ++r) a[r] = load(rows + r * ld + i);
    for (int m = 0; m < M; ++m) {
      const vfloat v = *reinterpret_cast<const vfloat*>(vec[m] + i);
      for (int r = 0; r < R; ++r) acc[r][m] = fmadd(a[r], v, acc[r][m]);
    }
  }
}

// FP8 rows are read a chunk at a time while whole chunks remain (the vectors permuted within each chunk, see
// chunk_source), then a vector at a time, then element by element, for any number of vectors: every lane of
// every accumulator then sums the same products in the same order whatever the number of rows and vectors,
// so a row's product with a vector does not depend on the other vectors of the call (a speculative verify's
// rows get what plain decode steps get: greedy outputs stay identical) nor on the rows beside it. Taking
// chunks only up to 4 vectors, as this code once did, summed the rows of larger calls in another order.
template <typename T>
constexpr bool chunked() {
  return kFp8Chunks && std::is_same_v<T, uint8_t>;
}

// The block's rows are rows[r * ld : + n] for r < R; the next block's, which are prefetched, next[r * ld : + n]
// (the rows that follow, or wherever the caller reads next: the next expert's matrix).
template <typename T, int R, int M>
inline void dot_block(const T* rows, const T* next, int64_t ld, const float* const* vec, int64_t n, float (*out)[R]) {
  vfloat acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = vfloat{};
  int64_t i = 0;
  if constexpr (chunked<T>()) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__F16C__))
    for (; i + kChunk <= n; i += kChunk) {
      for (int r = 0; r < R; ++r) __builtin_prefetch(next + r * ld + i, 0, 3);
      if constexpr (R >= M) {  // each row's half-chunk widened, the vectors read from L1 by the FMAs
        for (int r = 0; r < R; ++r) {
          for (int half = 0; half < 2; ++half) {
            vfloat w[2];
            load_even_odd(rows + r * ld + i, w, half == 1);
            for (int q = 0; q < 2; ++q)
              for (int m = 0; m < M; ++m)
                acc[r][m] =
                    fmadd(w[q], *reinterpret_cast<const vfloat*>(vec[m] + i + (2 * half + q) * kLanes), acc[r][m]);
          }
        }
      } else {  // more vectors than rows: the rows' half-chunks held, each vector read once for all of them
        for (int half = 0; half < 2; ++half) {
          vfloat w[R][2];
          for (int r = 0; r < R; ++r) load_even_odd(rows + r * ld + i, w[r], half == 1);
          for (int q = 0; q < 2; ++q)
            for (int m = 0; m < M; ++m) {
              const vfloat v = *reinterpret_cast<const vfloat*>(vec[m] + i + (2 * half + q) * kLanes);
              for (int r = 0; r < R; ++r) acc[r][m] = fmadd(w[r][q], v, acc[r][m]);
            }
        }
      }
    }
#endif
  }
#pragma GCC unroll 4
  for (; i + kLanes <= n; i += kLanes) {
    // The same line of the next block, at every vector: once per 64-byte line, though fewer instructions, was
    // slower (benchmarks/README.md, "FP8 and AVX2 in the decode kernels").
    for (int r = 0; r < R; ++r) __builtin_prefetch(next + r * ld + i, 0, 3);
    fma_at<T, R, M>(rows, ld, vec, i, acc);
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      float s = lane_sum(acc[r][m]);
      for (int64_t j = i; j < n; ++j) s = fmadd(scalar(rows[r * ld + j]), vec[m][j], s);
      out[m][r] = s;
    }
}

constexpr int64_t kAhead = 8192;  // bytes

// out[m * ldo + row] = <W[row, 0 : n], vec[m]> for rows [row0, row1) and M vectors, R rows at a time. The R
// rows of a block lie in R streams: [row0, row1) is cut into R stretches of q rows, and block j holds row j of
// each (rows row0 + j + r * q), the rows left over (fewer than R) going one at a time at the end. Consecutive
// rows would make one stream of reads per thread, whose memory-level parallelism a core's prefetchers cap:
// short rows (a 512-wide lm_head or expert) read well below the rate of long ones, whose R rows are R streams
// already (benchmarks/README.md, "Rows read in R streams"). While a block is read, each stretch's row kAhead
// bytes further on is prefetched. Past the end of a stretch the prefetches go to `after`, where the caller
// reads next (nullptr: W's next rows), as if it were a matrix of the same shape read in the same stretches (the
// next expert's matrix, or this one's next projection).
template <typename T, int M>
void rows_times_vecs(const T* W, int64_t n, int64_t row0, int64_t row1, const float* const* vec, float* out,
                     int64_t ldo, const T* after) {
  constexpr int R = rows_for(M);
  if (after == nullptr) after = W + row1 * n;
  const int64_t q = (row1 - row0) / R;
  const int64_t ahead = std::max<int64_t>(1, kAhead / std::max<int64_t>(1, n * int64_t{sizeof(T)}));
  float tmp[M][R];
  for (int64_t j = 0; j < q; ++j) {
    const T* next = j + ahead < q ? W + (row0 + j + ahead) * n : after + (j + ahead - q) * n;
    dot_block<T, R, M>(W + (row0 + j) * n, next, q * n, vec, n, tmp);
    for (int m = 0; m < M; ++m)
      for (int r = 0; r < R; ++r) out[m * ldo + row0 + j + r * q] = tmp[m][r];
  }
  for (int64_t row = row0 + q * R; row < row1; ++row) {
    float one[M][1];
    dot_block<T, 1, M>(W + row * n, after, n, vec, n, one);
    for (int m = 0; m < M; ++m) out[m * ldo + row] = one[m][0];
  }
}

// The same for any number of vectors, up to kMaxVecs per pass over the rows (a pass but the last reads the
// rows again next).
template <typename T>
void rows_times_any(const T* W, int64_t n, int64_t row0, int64_t row1, const float* const* vec, int64_t nvec,
                    float* out, int64_t ldo, const T* after = nullptr) {
  for (int64_t m0 = 0; m0 < nvec; m0 += kMaxVecs) {
    const float* const* v = vec + m0;
    float* o = out + m0 * ldo;
    const T* a = m0 + kMaxVecs < nvec ? W + row0 * n : after;
    switch (std::min<int64_t>(kMaxVecs, nvec - m0)) {
      case 1: rows_times_vecs<T, 1>(W, n, row0, row1, v, o, ldo, a); break;
      case 2: rows_times_vecs<T, 2>(W, n, row0, row1, v, o, ldo, a); break;
      case 3: rows_times_vecs<T, 3>(W, n, row0, row1, v, o, ldo, a); break;
      case 4: rows_times_vecs<T, 4>(W, n, row0, row1, v, o, ldo, a); break;
      case 5: rows_times_vecs<T, 5>(W, n, row0, row1, v, o, ldo, a); break;
      case 6: rows_times_vecs<T, 6>(W, n, row0, row1, v, o, ldo, a); break;
      case 7: rows_times_vecs<T, 7>(W, n, row0, row1, v, o, ldo, a); break;
      default: rows_times_vecs<T, 8>(W, n, row0, row1, v, o, ldo, a); break;
    }
  }
}

// Threads sharing N rows in units of kSplit rows, and each thread's share: f(thread, row0, row1) on every one.
inline int64_t threads_for(int64_t N) {
  const int64_t units = (N + kSplit - 1) / kSplit;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), units));
}

template <typename F>
void for_thread_rows(int64_t N, F&& f) {
  const int64_t units = (N + kSplit - 1) / kSplit, nt = threads_for(N);
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row0 = std::min(N, units * t / nt * kSplit), row1 = std::min(N, units * (t + 1) / nt * kSplit);
      f(t, row0, row1);
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
//   pass 1, per expert e and row f:  g[a, f] = <Wgate[e, f], x_t>,  u[a, f] = <Wup[e, f], x_t>,
//                                     act[a, f] = w_a * silu(g[a, f]) * u[a, f]
//   pass 2, per expert e and row d:  part[a, d] = <Wd[e, d], act[a]>,  y[t, d] += part[a, d] for t's assignments
//
// where a runs over the assignments of expert e, so an expert chosen by several tokens is read once. Each
// pass splits the rows among the threads (pass 1 the rows f of every chosen expert's gate and up, pass 2 the
// rows d of every down): a thread reads one stretch of each matrix and knows which it reads next, so the end
// of one is read with the start of the next prefetched (an expert's matrix is small: each began with cold
// misses when threads split experts and prefetched only within one), and a call has two parallel regions.
// A thread adds its own columns of y, in the order of the assignments as sorted (by expert): a token's sum
// does not depend on the other tokens of the step.
//
// rows(proj, e, row0, row1, vec, nvec, out, ldo, after) computes rows [row0, row1) of projection proj (0 gate,
// 1 up, 2 down) of expert e for nvec vectors, prefetching `after` (a pointer from row_at) at the end;
// row_at(proj, e, row) -> the first byte of that row.
template <typename Rows, typename At>
at::Tensor moe_decode_with(const at::Tensor& x, int64_t E, int64_t I, const at::Tensor& weights,
                           const at::Tensor& experts, const char* op, Rows&& rows, At&& row_at) {
  TORCH_CHECK(experts.dim() == 2 && experts.size(0) == x.size(0) && weights.sizes() == experts.sizes(), op,
              ": experts and weights must be [T, k]");
  const int64_t T = x.size(0), D = x.size(1), K = experts.size(1), A = T * K;
  const at::Tensor ex = experts.to(at::kLong).contiguous();
  const at::Tensor wt = weights.to(at::kFloat).contiguous();
  const float* wp = wt.const_data_ptr<float>();
  const Groups gr = group_by_expert(ex.const_data_ptr<int64_t>(), A, E, op);
  const int64_t G = static_cast<int64_t>(gr.group_expert.size());

  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const float* xp = xf.const_data_ptr<float>();
  std::vector<float> g(A * I), u(A * I), act(A * I), part(A * D);
  std::vector<const float*> xvec(A), avec(A);
  for (int64_t p = 0; p < A; ++p) {
    xvec[p] = xp + (gr.sorted[p] / K) * D;
    avec[p] = act.data() + p * I;
  }
  at::Tensor y = at::empty({T, D}, xf.options());
  float* yp = y.data_ptr<float>();
  if (G == 0) return y.zero_().to(x.scalar_type());
  const int64_t e_first = gr.group_expert[0];

  // Pass 1: gate and up rows [f0, f1) of each chosen expert, then act for those rows. The last up matrix
  // prefetches the first down rows of pass 2 for the same thread index (OpenMP hands it the same worker).
  for_thread_rows(I, [&](int64_t t, int64_t f0, int64_t f1) {
    if (f0 >= f1) return;
    const int64_t d_units = (D + kSplit - 1) / kSplit, nt2 = threads_for(D);
    const int64_t d0 = std::min(D, d_units * t / nt2 * kSplit);
    for (int64_t q = 0; q < G; ++q) {
      const int64_t e = gr.group_expert[q], p0 = gr.start[q], np = gr.start[q + 1] - p0;
      rows(0, e, f0, f1, xvec.data() + p0, np, g.data() + p0 * I, I, row_at(1, e, f0));
      rows(1, e, f0, f1, xvec.data() + p0, np, u.data() + p0 * I, I,
           q + 1 < G ? row_at(0, gr.group_expert[q + 1], f0) : row_at(2, e_first, d0));
      for (int64_t p = p0; p < p0 + np; ++p) {
        const float w = wp[gr.sorted[p]];
        const float* gate = g.data() + p * I;
        const float* up = u.data() + p * I;
        for (int64_t f = f0; f < f1; ++f) act[p * I + f] = w * gate[f] / (1.f + std::exp(-gate[f])) * up[f];
      }
    }
  });

  // Pass 2: down rows [d0, d1) of each chosen expert; this thread's columns of y.
  for_thread_rows(D, [&](int64_t, int64_t d0, int64_t d1) {
    for (int64_t t = 0; t < T; ++t) std::fill(yp + t * D + d0, yp + t * D + d1, 0.f);
    if (d0 >= d1) return;
    for (int64_t q = 0; q < G; ++q) {
      const int64_t e = gr.group_expert[q], p0 = gr.start[q], np = gr.start[q + 1] - p0;
      rows(2, e, d0, d1, avec.data() + p0, np, part.data() + p0 * D, D,
           q + 1 < G ? row_at(2, gr.group_expert[q + 1], d0) : nullptr);
      for (int64_t p = p0; p < p0 + np; ++p) {
        float* dst = yp + (gr.sorted[p] / K) * D;
        const float* src = part.data() + p * D;
        for (int64_t d = d0; d < d1; ++d) dst[d] += src[d];
      }
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
