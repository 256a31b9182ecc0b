// mimo::rms_norm(x, weight, eps) -> y: RMSNorm over the last dimension as mimo/ops/norm.py defines it (and
// transformers' MiMoV2FlashRMSNorm): r = 1 / sqrt(mean(x^2) + eps) in fp32; fp32 x: y = x * r * w; bf16 x:
// y = bf16(w * bf16(x * r)), the two roundings torch's path makes. x contiguous fp32 or bf16 [..., D]; w [D] of
// x's dtype (or bf16 under fp32 x, widened).
//
// Why a kernel: torch's CPU rms_norm takes ~8 us for one row of 256 (a composite of several operations), where an
// add takes 1 us; a decode step normalises 17 rows in mimo-nano's trunk (and 5 more per MTP block it drafts with),
// ~0.15 ms of a ~1.9 ms eager step.

#include <torch/library.h>

#include "decode.h"

namespace {

using namespace mimo_kernels;

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const char* op = "rms_norm";
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), op, ": CPU tensors only");
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous(), op, ": x must be a contiguous tensor of at least one dimension");
  const int64_t D = x.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == D && weight.is_contiguous(), op, ": weight must be [", D,
              "], got ", weight.sizes());
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(x.scalar_type() == at::kFloat || bf16, op, ": x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() || (!bf16 && weight.scalar_type() == at::kBFloat16), op,
              ": weight must be of x's dtype (or bfloat16 under float32 x), got ", weight.scalar_type(), " and ",
              x.scalar_type());
  at::Tensor out = at::empty_like(x);
  const int64_t rows = D ? x.numel() / D : 0;
  const at::Tensor wf = weight.to(at::kFloat).contiguous();
  const float* w = wf.const_data_ptr<float>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, D)), [&](int64_t r0, int64_t r1) {
    std::vector<float> row(bf16 ? D : 0);
    for (int64_t r = r0; r < r1; ++r) {
      if (!bf16) {
        const float* xr = x.const_data_ptr<float>() + r * D;
        float* o = out.data_ptr<float>() + r * D;
        const float s = 1.f / std::sqrt(dot(xr, xr, D) / static_cast<float>(D) + e);
        for (int64_t d = 0; d < D; ++d) o[d] = xr[d] * s * w[d];
      } else {
        const uint16_t* xr = reinterpret_cast<const uint16_t*>(x.const_data_ptr<at::BFloat16>()) + r * D;
        uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()) + r * D;
        for (int64_t d = 0; d < D; ++d) row[d] = scalar(xr[d]);
        const float s = 1.f / std::sqrt(dot(row.data(), row.data(), D) / static_cast<float>(D) + e);
        for (int64_t d = 0; d < D; ++d) o[d] = bf16_bits(w[d] * scalar(bf16_bits(row[d] * s)));
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mimo, m) { m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor"); }

TORCH_LIBRARY_IMPL(mimo, CPU, m) { m.impl("rms_norm", &rms_norm); }
