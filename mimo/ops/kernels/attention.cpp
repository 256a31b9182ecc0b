// mimo::attention_decode(q, k, v, q_pos, k_pos, window, sinks, scale) -> out [B, Hq, T, Dv]: attention of a few
// queries per row (a decode step, a speculative verify) over the KV cache, with grouped KV heads, the mask rule
// of mimo/ops/attention.py (key j visible to query i iff 0 <= k_pos[j] <= q_pos[i] and, with a window,
// q_pos[i] - k_pos[j] < window; window 0: none) and an optional sink logit per query head (it joins the softmax's
// denominator and carries no value). q [B, Hq, T, D], k [B, Hkv, S, D], v [B, Hkv, S, Dv], fp32 or bf16 (all
// three alike), any strides with the last dimension contiguous; positions int64 [B, T] and [B, S]. Sums in fp32.
//
// Why a kernel: torch spends a decode step's attention in 5-8 operations per layer (scores, mask, sink column,
// softmax, the value product, their copies), each a few microseconds of dispatch for a few hundred multiply-adds
// at batch 1; masked keys (empty ring-buffer slots, keys outside the window) are skipped here, not multiplied.
// A query with no visible key and no sink (a padded verify row, position -1) gets zeros.

#include <torch/library.h>

#include <limits>

#include "decode.h"

namespace {

using namespace mimo_kernels;

template <typename T>
inline void add_scaled(float w, const T* a, float* out, int64_t n) {
  const vfloat wv = vfloat{} + w;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) *reinterpret_cast<vfloat*>(out + i) = fmadd(wv, load(a + i), load(out + i));
  for (; i < n; ++i) out[i] = fmadd(w, scalar(a[i]), out[i]);
}

template <typename T>
void attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const int64_t* qp, const int64_t* kp,
            int64_t window, const float* sink, float scale, float* out) {
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2), Dv = v.size(3), rep = Hq / Hkv;
  const T* Q = reinterpret_cast<const T*>(q.const_data_ptr());
  const T* K = reinterpret_cast<const T*>(k.const_data_ptr());
  const T* V = reinterpret_cast<const T*>(v.const_data_ptr());
  const auto qs = q.strides(), ks = k.strides(), vs = v.strides();
  const int64_t rows = B * Hq * Tq;
  // Small problems (batch-1 decode) run on the calling thread: a parallel region costs more than they do.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, S * (D + Dv)));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> xq(D), score(S), acc(Dv);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / (Hq * Tq), h = r / Tq % Hq, t = r % Tq, g = h / rep;
      const int64_t pos = qp[b * Tq + t];
      const T* qrow = Q + b * qs[0] + h * qs[1] + t * qs[2];
      for (int64_t d = 0; d < D; ++d) xq[d] = scalar(qrow[d]) * scale;
      const T* kbase = K + b * ks[0] + g * ks[1];
      const T* vbase = V + b * vs[0] + g * vs[1];
      const int64_t* kpos = kp + b * S;
      float top = sink ? sink[h] : -std::numeric_limits<float>::infinity();
      bool any = false;
      int64_t first = 0, first_pos = std::numeric_limits<int64_t>::max();  // the slot of the oldest visible key
      for (int64_t s = 0; s < S; ++s) {
        const int64_t p = kpos[s];
        if (p < 0 || p > pos || (window > 0 && pos - p >= window)) {
          score[s] = -std::numeric_limits<float>::infinity();
          continue;
        }
        score[s] = dot(kbase + s * ks[2], xq.data(), D);
        top = std::max(top, score[s]);
        any = true;
        if (p < first_pos) first_pos = p, first = s;
      }
      float* o = out + r * Dv;
      if (!any) {  // nothing visible: no value to weigh (with a sink, all weight is the sink's)
        std::fill(o, o + Dv, 0.f);
        continue;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      float sum = sink ? std::exp(sink[h] - top) : 0.f;
      // Keys are summed in the order of their positions, from the oldest visible one's slot on, wrapping: a ring
      // buffer holds them at position % its size, and its size differs between engines (a speculative engine's
      // ring has room for the drafts), so slot order would sum one query's keys in another order than a plain
      // engine does. In a full cache slots are positions: the order is the slots'. (Batch invariance: a verify's
      // query gets the bits a plain step's query gets.)
      for (int64_t j = 0; j < S; ++j) {
        const int64_t s = first + j < S ? first + j : first + j - S;
        if (score[s] == -std::numeric_limits<float>::infinity()) continue;
        const float p = std::exp(score[s] - top);
        sum += p;
        add_scaled(p, vbase + s * vs[2], acc.data(), Dv);
      }
      const float inv = 1.f / sum;
      for (int64_t d = 0; d < Dv; ++d) o[d] = acc[d] * inv;
    }
  });
}

at::Tensor attention_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_pos,
                            const at::Tensor& k_pos, int64_t window, const std::optional<at::Tensor>& sinks,
                            double scale) {
  const char* op = "attention_decode";
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op, ": q, k and v must be 4-D, got ", q.sizes(), ", ",
              k.sizes(), " and ", v.sizes());
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(k.size(0) == B && v.size(0) == B && v.size(1) == Hkv && v.size(2) == S && k.size(3) == q.size(3), op,
              ": shapes do not match: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, op, ": ", Hq, " query heads cannot share ", Hkv, " KV heads");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type() &&
                  (q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16),
              op, ": q, k and v must all be float32 or all bfloat16, got ", q.scalar_type(), ", ", k.scalar_type(),
              " and ", v.scalar_type());
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), op, ": CPU tensors only");
  auto last_contiguous = [](const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  const at::Tensor qc = last_contiguous(q), kc = last_contiguous(k), vc = last_contiguous(v);
  TORCH_CHECK(q_pos.scalar_type() == at::kLong && q_pos.sizes() == at::IntArrayRef({B, Tq}), op,
              ": q_pos must be int64 [B, T] = [", B, ", ", Tq, "], got ", q_pos.scalar_type(), " ", q_pos.sizes());
  TORCH_CHECK(k_pos.scalar_type() == at::kLong && k_pos.sizes() == at::IntArrayRef({B, S}), op,
              ": k_pos must be int64 [B, S] = [", B, ", ", S, "], got ", k_pos.scalar_type(), " ", k_pos.sizes());
  TORCH_CHECK(window >= 0, op, ": window must be >= 0 (0: none), got ", window);
  const at::Tensor qp = q_pos.contiguous(), kp = k_pos.contiguous();
  at::Tensor sk;
  if (sinks.has_value()) {
    sk = sinks->to(at::kFloat).contiguous();
    TORCH_CHECK(sk.dim() == 1 && sk.size(0) == Hq, op, ": sinks must be [Hq] = [", Hq, "], got ", sk.sizes());
  }
  at::Tensor out = at::empty({B, Hq, Tq, v.size(3)}, q.options().dtype(at::kFloat));
  const float* sp = sinks.has_value() ? sk.const_data_ptr<float>() : nullptr;
  if (q.scalar_type() == at::kFloat)
    attend<float>(qc, kc, vc, qp.const_data_ptr<int64_t>(), kp.const_data_ptr<int64_t>(), window, sp,
                  static_cast<float>(scale), out.data_ptr<float>());
  else
    attend<uint16_t>(qc, kc, vc, qp.const_data_ptr<int64_t>(), kp.const_data_ptr<int64_t>(), window, sp,
                     static_cast<float>(scale), out.data_ptr<float>());
  return q.scalar_type() == at::kFloat ? out : out.to(q.scalar_type());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mimo, m) {
  m.def(
      "attention_decode(Tensor q, Tensor k, Tensor v, Tensor q_pos, Tensor k_pos, int window, Tensor? sinks, "
      "float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(mimo, CPU, m) { m.impl("attention_decode", &attention_decode); }
