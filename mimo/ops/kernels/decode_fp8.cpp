// FP8 (e4m3fn) weights with block scales in mimo's decode kernels, and their dequantization for prefill.
//
// A weight w [N, K] in float8_e4m3fn comes with a grid of fp32 scales [R, ceil(K / block_k)] and, per row n,
// the grid row it uses, row_index[n]: the release's 128 x 128 blocks, or its per-KV-head grid of the
// full-attention k_proj (128-row blocks restarting every head). w[n, k] stands for
// float(w[n, k]) * scale[row_index[n], k / block_k].
//
// mimo::linear_decode_fp8(x [M, K], w, scale, row_index, block_k) -> x @ W.T, for M <= 8 rows.
// mimo::moe_decode_fp8 - mimo::moe_decode with FP8 experts, each with its own uniform grid of block_r x
//   block_k blocks (s_gate / s_up [E, ceil(I / block_r), ceil(D / block_k)], s_down [E, ceil(D / block_r),
//   ceil(I / block_k)]).
// mimo::dequant_fp8(w, scale, row_index, block_k, dtype) -> W in fp32 or bf16, bit-identical to torch's
//   (w.float() * scale[row_index][:, k // block_k]).to(dtype), for prefill (dequantize, then a GEMM:
//   torch widens FP8 one element at a time on AVX2).
//
// Rows that share a scale row (a run) share the scales along k, so the decode kernels scale the vectors
// instead of the weights: xs[m][k] = x[m][k] * scale[run's row][k / block_k] * 2^8, once per run, and the
// rows' dot products with xs are the plain blocked loops of decode.h on FP8 rows (widened to value * 2^-8,
// hence the 2^8). No block of rows straddles a run.

#include <torch/library.h>

#include "decode.h"

namespace {

using namespace mimo_kernels;

const uint8_t* fp8_data(const at::Tensor& w) { return static_cast<const uint8_t*>(w.const_data_ptr()); }

void check_fp8(const at::Tensor& w, int64_t dim, const char* what, const char* op) {
  TORCH_CHECK(w.scalar_type() == at::kFloat8_e4m3fn, op, ": ", what, " must be float8_e4m3fn, got ", w.scalar_type());
  TORCH_CHECK(w.dim() == dim && w.is_contiguous() && w.device().is_cpu(), op, ": ", what, " must be a contiguous ",
              dim, "-D CPU tensor, got ", w.dim(), "-D", w.is_contiguous() ? "" : " (not contiguous)", " on ",
              w.device());
}

void check_scale(const at::Tensor& s, at::IntArrayRef want, const char* what, const char* op) {
  TORCH_CHECK(s.scalar_type() == at::kFloat && s.is_contiguous() && s.device().is_cpu(), op, ": ", what,
              " must be a contiguous float32 CPU tensor, got ", s.scalar_type());
  TORCH_CHECK(s.sizes() == want, op, ": ", what, " has shape ", s.sizes(), ", expected ", want);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Per-thread scratch: the vectors in the chunked loads' order (once per call), and their scaled copies (per
// run of rows sharing a scale row), with pointers to the latter.
struct Scaled {
  std::vector<float> perm, buf;
  std::vector<const float*> ptr;
  const float* const* prepare(int64_t nvec, int64_t n) {
    perm.resize(nvec * n);
    buf.resize(nvec * n);
    ptr.resize(nvec);
    for (int64_t m = 0; m < nvec; ++m) ptr[m] = buf.data() + m * n;
    return ptr.data();
  }
};
thread_local Scaled scaled;

// The position in the row of the code that the chunked FP8 loads put at position k of a vector (decode.h,
// chunk_source): codes are permuted within each whole chunk, and the rest (the row's tail) are not.
inline int64_t source_of(int64_t k, int64_t n) {
  if (!kFp8Chunks || k >= n / kChunk * kChunk) return k;
  const int64_t c = k / kChunk * kChunk, o = k - c;
  return c + chunk_source(static_cast<int>(o / kLanes), static_cast<int>(o % kLanes));
}

// perm[m][k] = vec[m][source_of(k)]: once per call, as every run of rows meets the same vectors.
void permute_vectors(const float* const* vec, int64_t nvec, int64_t n, float* perm) {
  for (int64_t m = 0; m < nvec; ++m) {
    const float* v = vec[m];
    float* o = perm + m * n;
    const int64_t whole = kFp8Chunks ? n / kChunk * kChunk : 0;
    for (int64_t k0 = 0; k0 < whole; k0 += kChunk)
      for (int q = 0; q < 4; ++q)
        for (int l = 0; l < kLanes; ++l) o[k0 + q * kLanes + l] = v[k0 + chunk_source(q, l)];
    std::memcpy(o + whole, v + whole, (n - whole) * sizeof(float));
  }
}

// xs[m][k] = perm[m][k] * srow[source_of(k) / block_k] * 2^8. Where block_k is a multiple of the chunk (the
// release's 128), a chunk lies in one block, so the permuted vector is scaled block by block; else element by
// element through source_of.
void scale_vectors(const float* perm, int64_t nvec, int64_t n, const float* srow, int64_t block_k, float* xs) {
  const bool blockwise = !kFp8Chunks || block_k % kChunk == 0;
  for (int64_t m = 0; m < nvec; ++m) {
    const float* v = perm + m * n;
    float* o = xs + m * n;
    if (blockwise) {
      for (int64_t k0 = 0, c = 0; k0 < n; k0 += block_k, ++c) {
        const float s = srow[c] * 256.f;
        const int64_t k1 = std::min(k0 + block_k, n);
        for (int64_t k = k0; k < k1; ++k) o[k] = v[k] * s;
      }
    } else {
      for (int64_t k = 0; k < n; ++k) o[k] = v[k] * (srow[source_of(k, n) / block_k] * 256.f);
    }
  }
}

// out[m * ldo + row] = <W[row] * its scales, vec[m]> for rows [row0, row1) of W [*, n], where
// run(row, row1) -> {scale row of `row`, end of its run (<= row1)} and the grid has ceil(n / block_k) columns.
template <typename Run>
void fp8_rows_times_any(const uint8_t* W, int64_t n, int64_t row0, int64_t row1, Run&& run, const float* grid,
                        int64_t block_k, const float* const* vec, int64_t nvec, float* out, int64_t ldo,
                        const uint8_t* after = nullptr) {
  const int64_t cols = ceil_div(n, block_k);
  const float* const* xs = scaled.prepare(nvec, n);
  permute_vectors(vec, nvec, n, scaled.perm.data());
  for (int64_t row = row0; row < row1;) {
    const auto [srow, end] = run(row, row1);
    scale_vectors(scaled.perm.data(), nvec, n, grid + srow * cols, block_k, scaled.buf.data());
    rows_times_any(W, n, row, end, xs, nvec, out, ldo, end < row1 ? W + end * n : after);
    row = end;
  }
}

// A row_index [N] of int32, checked against the grid's R rows; runs are maximal stretches of one value.
const int32_t* checked_row_index(const at::Tensor& row_index, int64_t N, int64_t R, const char* op) {
  TORCH_CHECK(row_index.scalar_type() == at::kInt && row_index.dim() == 1 && row_index.size(0) == N &&
                  row_index.is_contiguous() && row_index.device().is_cpu(),
              op, ": row_index must be a contiguous int32 CPU tensor of ", N, " entries (one per weight row), got ",
              row_index.scalar_type(), " ", row_index.sizes());
  const int32_t* ri = row_index.const_data_ptr<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    TORCH_CHECK(ri[n] >= 0 && ri[n] < R, op, ": row_index[", n, "] = ", ri[n], " outside the scale's ", R, " rows");
  return ri;
}

struct RunOfIndex {  // runs of equal row_index values
  const int32_t* ri;
  std::pair<int64_t, int64_t> operator()(int64_t row, int64_t row1) const {
    int64_t end = row + 1;
    while (end < row1 && ri[end] == ri[row]) ++end;
    return {ri[row], end};
  }
};

struct RunOfBlock {  // uniform blocks of block_r rows
  int64_t block_r;
  std::pair<int64_t, int64_t> operator()(int64_t row, int64_t row1) const {
    return {row / block_r, std::min((row / block_r + 1) * block_r, row1)};
  }
};

void check_weight_and_grid(const at::Tensor& w, const at::Tensor& scale, int64_t block_k, const char* op) {
  check_fp8(w, 2, "w", op);
  TORCH_CHECK(block_k > 0, op, ": block_k must be positive, got ", block_k);
  TORCH_CHECK(scale.dim() == 2, op, ": scale must be 2-D [rows of the grid, ceil(K / block_k)], got ", scale.sizes());
  check_scale(scale, {scale.size(0), ceil_div(w.size(1), block_k)}, "scale", op);
}

at::Tensor linear_decode_fp8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                             const at::Tensor& row_index, int64_t block_k) {
  const char* op = "linear_decode_fp8";
  check_activations(x, op);
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), op, ": x [M, K] and w [N, K], got ",
              x.sizes(), " and ", w.sizes());
  check_weight_and_grid(w, scale, block_k, op);
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const RunOfIndex run{checked_row_index(row_index, N, scale.size(0), op)};
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor y = at::empty({M, N}, xf.options());
  std::vector<const float*> vec(M);
  for (int64_t m = 0; m < M; ++m) vec[m] = xf.const_data_ptr<float>() + m * K;
  const uint8_t* W = fp8_data(w);
  const float* grid = scale.const_data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, ceil_div(N, kSplit), 1, [&](int64_t b0, int64_t b1) {
    fp8_rows_times_any(W, K, b0 * kSplit, std::min(b1 * kSplit, N), run, grid, block_k, vec.data(), M, yp, N);
  });
  return y.to(x.scalar_type());
}

at::Tensor moe_decode_fp8(const at::Tensor& x, const at::Tensor& w_gate, const at::Tensor& w_up,
                          const at::Tensor& w_down, const at::Tensor& s_gate, const at::Tensor& s_up,
                          const at::Tensor& s_down, int64_t block_r, int64_t block_k, const at::Tensor& weights,
                          const at::Tensor& experts) {
  const char* op = "moe_decode_fp8";
  check_activations(x, op);
  TORCH_CHECK(x.dim() == 2, op, ": x must be [T, D], got ", x.sizes());
  check_fp8(w_gate, 3, "w_gate", op);
  check_fp8(w_up, 3, "w_up", op);
  check_fp8(w_down, 3, "w_down", op);
  TORCH_CHECK(block_r > 0 && block_k > 0, op, ": block sizes must be positive, got ", block_r, " and ", block_k);
  const int64_t D = x.size(1), E = w_gate.size(0), I = w_gate.size(1);
  TORCH_CHECK(w_gate.size(2) == D && w_up.sizes() == w_gate.sizes() && w_down.size(0) == E && w_down.size(1) == D &&
                  w_down.size(2) == I,
              op, ": weights must be [E, I, D], [E, I, D] and [E, D, I] with D = ", D, ", got ", w_gate.sizes(), ", ",
              w_up.sizes(), " and ", w_down.sizes());
  const int64_t gr_rows = ceil_div(I, block_r), gr_cols = ceil_div(D, block_k);
  const int64_t dn_rows = ceil_div(D, block_r), dn_cols = ceil_div(I, block_k);
  check_scale(s_gate, {E, gr_rows, gr_cols}, "s_gate", op);
  check_scale(s_up, {E, gr_rows, gr_cols}, "s_up", op);
  check_scale(s_down, {E, dn_rows, dn_cols}, "s_down", op);
  const RunOfBlock run{block_r};

  const at::Tensor* w[3] = {&w_gate, &w_up, &w_down};
  const at::Tensor* sc[3] = {&s_gate, &s_up, &s_down};
  const int64_t cols[3] = {D, D, I}, grid_size[3] = {gr_rows * gr_cols, gr_rows * gr_cols, dn_rows * dn_cols};
  auto rows = [&](int proj, int64_t e, int64_t row0, int64_t row1, const float* const* vec, int64_t nvec, float* out,
                  int64_t ldo, const void* after) {
    fp8_rows_times_any(fp8_data(*w[proj]) + e * I * D, cols[proj], row0, row1, run,
                       sc[proj]->const_data_ptr<float>() + e * grid_size[proj], block_k, vec, nvec, out, ldo,
                       static_cast<const uint8_t*>(after));
  };
  auto row_at = [&](int proj, int64_t e, int64_t row) -> const void* {
    return fp8_data(*w[proj]) + e * I * D + row * cols[proj];
  };
  return moe_decode_with(x, E, I, weights, experts, op, rows, row_at);
}

at::Tensor dequant_fp8(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& row_index, int64_t block_k,
                       at::ScalarType dtype) {
  const char* op = "dequant_fp8";
  check_weight_and_grid(w, scale, block_k, op);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, op, ": dtype must be float32 or bfloat16, got ", dtype);
  const int64_t N = w.size(0), K = w.size(1), cols = ceil_div(K, block_k);
  const int32_t* ri = checked_row_index(row_index, N, scale.size(0), op);
  at::Tensor out = at::empty({N, K}, w.options().dtype(dtype));
  const uint8_t* W = fp8_data(w);
  const float* grid = scale.const_data_ptr<float>();
  const bool bf16 = dtype == at::kBFloat16;
  float* of = bf16 ? nullptr : out.data_ptr<float>();
  uint16_t* ob = bf16 ? reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()) : nullptr;
  // float(w) * s with one rounding, as torch: widening to value * 2^-8 and multiplying by 2^8 is exact.
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* src = W + n * K;
      const float* srow = grid + static_cast<int64_t>(ri[n]) * cols;
      for (int64_t k0 = 0, c = 0; k0 < K; k0 += block_k, ++c) {
        const float s = srow[c];
        const int64_t k1 = std::min(k0 + block_k, K);
        int64_t k = k0;
        for (; k + kLanes <= k1; k += kLanes) {
          const vfloat v = (load(src + k) * 256.f) * s;
          if (bf16) {
            vu32 u;
            std::memcpy(&u, &v, sizeof(u));
            const vu16 h = __builtin_convertvector((u + 0x7fffu + ((u >> 16) & 1u)) >> 16, vu16);
            std::memcpy(ob + n * K + k, &h, sizeof(h));
          } else {
            std::memcpy(of + n * K + k, &v, sizeof(v));
          }
        }
        for (; k < k1; ++k) {
          const float v = (scalar(src[k]) * 256.f) * s;
          if (bf16)
            ob[n * K + k] = bf16_bits(v);
          else
            of[n * K + k] = v;
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mimo, m) {
  m.def("linear_decode_fp8(Tensor x, Tensor w, Tensor scale, Tensor row_index, int block_k) -> Tensor");
  m.def(
      "moe_decode_fp8(Tensor x, Tensor w_gate, Tensor w_up, Tensor w_down, Tensor s_gate, Tensor s_up, "
      "Tensor s_down, int block_r, int block_k, Tensor weights, Tensor experts) -> Tensor");
  m.def("dequant_fp8(Tensor w, Tensor scale, Tensor row_index, int block_k, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(mimo, CPU, m) {
  m.impl("linear_decode_fp8", &linear_decode_fp8);
  m.impl("moe_decode_fp8", &moe_decode_fp8);
  m.impl("dequant_fp8", &dequant_fp8);
}
