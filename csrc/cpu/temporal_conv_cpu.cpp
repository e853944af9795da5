// Fused temporal Fourier convolution on the CPU: out = x + act(K x) along the frame axis, forward and backward.
//
// x is [N, P, C] (scalar channels) or [N, P, 3, C] (vector channels; the 3 components are independent rows).
// No FFT and no complex tensors: a block of rows at a time, the I kept DFT coefficients are sums over the P frames
// (cos / sin tables), the per-mode complex channel mixing is one real GEMM per mode,
//   [Re | Im] (rows x 2C) @ [[W_re, W_im], [-W_im, W_re]] (2C x 2C) = [Y_re | Y_im],
// and the inverse real DFT, the activation and the residual are applied while the block is in cache: one read of
// x and one write of the output. As torch.fft.irfft does, the imaginary parts of the DC bin and (even P) of the
// Nyquist bin are ignored (their sine tables are zero) and the other kept bins count twice.
// Backward, in one pass over the same blocks: grad_pre = grad_out * act'(pre) with the pre-activation stored by the
// forward (one [N, P, ..., C] tensor), grad_x = grad_out + K^H grad_pre (conjugate-transposed weights), and dL/dW
// from the spectra of x and grad_pre, accumulated per group of blocks and added in group order (deterministic for
// any thread count).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "parallel.h"
#include "tiles.h"

#include <cmath>
#include <vector>

namespace egno_fast {
namespace {

constexpr int64_t kBlockRows = 128;         // at least; more for narrow channels:
constexpr int64_t kBlockSpectrum = 16384;   // about this many values per mode's [rows, 2C] spectrum
constexpr int64_t kMaxGroups = 64;
constexpr double kLeakySlope = 0.01;

struct Layout {
  int64_t nodes, frames, comps, channels, modes;  // x viewed as [N, P, S, C]
  int64_t rows() const { return nodes * comps; }
  int64_t block_rows() const { return std::max<int64_t>(kBlockRows, kBlockSpectrum / (2 * channels)); }
  int64_t num_blocks() const { return (rows() + block_rows() - 1) / block_rows(); }
  // offset of frame 0 of row r (node r / S, component r % S); frames are S * C apart
  int64_t base(int64_t r) const { return (r / comps) * frames * comps * channels + (r % comps) * channels; }
};

Layout layout_of(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 3 || (x.dim() == 4 && x.size(2) == 3),
              "temporal_residual: x must be [N, P, C] or [N, P, 3, C], got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "temporal_residual (CPU): tensors must be on the CPU");
  const int64_t channels = x.size(-1);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == channels && weight.size(1) == channels && weight.size(3) == 2,
              "temporal_residual: weight must be [C, C, I, 2] with C = ", channels, ", got ", weight.sizes());
  const int64_t frames = x.size(1), modes = weight.size(2);
  TORCH_CHECK(modes >= 1 && modes <= frames / 2 + 1, "temporal_residual: I = ", modes,
              " modes need 1 <= I <= P // 2 + 1 with P = ", frames);
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "temporal_residual: weight dtype ", weight.scalar_type(),
              " differs from x's ", x.scalar_type());
  return {x.size(0), frames, x.dim() == 4 ? 3 : 1, channels, modes};
}

// cos / sin(2 pi m t / P) [I, P] (sines of the DC and Nyquist bins exactly zero) and the inverse weights alpha_m / P.
template <typename T>
struct DftTables {
  std::vector<T> cos, sin, inverse;
  std::vector<T> inverse_cos, inverse_sin;  // [P, I]: cos / sin * alpha_m / P, frame-major for the inverse DFT
  DftTables(int64_t frames, int64_t modes)
      : cos(modes * frames), sin(modes * frames), inverse(modes), inverse_cos(frames * modes),
        inverse_sin(frames * modes) {
    for (int64_t m = 0; m < modes; ++m) {
      const bool real_bin = m == 0 || 2 * m == frames;
      inverse[m] = (real_bin ? 1.0 : 2.0) / static_cast<double>(frames);
      for (int64_t t = 0; t < frames; ++t) {
        const int64_t turn = (m * t) % frames;  // angle = 2 pi turn / P
        double c, s;
        if ((4 * turn) % frames == 0) {  // multiples of pi / 2 exactly, as an FFT's twiddles: constant inputs
          const int64_t quarter = 4 * turn / frames;  // then give exact zeros in the other bins
          c = quarter == 0 ? 1.0 : (quarter == 2 ? -1.0 : 0.0);
          s = quarter == 1 ? 1.0 : (quarter == 3 ? -1.0 : 0.0);
        } else {
          const double angle = 2.0 * M_PI * static_cast<double>(turn) / static_cast<double>(frames);
          c = std::cos(angle);
          s = std::sin(angle);
        }
        cos[m * frames + t] = static_cast<T>(c);
        sin[m * frames + t] = real_bin ? T(0) : static_cast<T>(s);
      }
    }
    for (int64_t t = 0; t < frames; ++t) {
      for (int64_t m = 0; m < modes; ++m) {
        inverse_cos[t * modes + m] = cos[m * frames + t] * static_cast<T>(inverse[m]);
        inverse_sin[t * modes + m] = sin[m * frames + t] * static_cast<T>(inverse[m]);
      }
    }
  }
};

// Per mode the real [2C, 2C] matrix of the complex mixing, [[W_re, W_im], [-W_im, W_re]] (row = input channel);
// adjoint: the conjugate transpose K^H, [[W_re^T, -W_im^T], [W_im^T, W_re^T]].
template <typename T>
at::Tensor packed_mixing(const at::Tensor& weight, bool adjoint) {
  const at::Tensor w = weight.contiguous();  // [C_in, C_out, I, 2]
  const int64_t C = w.size(0), modes = w.size(2), c2 = 2 * C;
  at::Tensor packed = at::empty({modes, c2, c2}, w.options());
  const T* pw = w.data_ptr<T>();
  T* out = packed.data_ptr<T>();
  for (int64_t m = 0; m < modes; ++m) {
    T* k = out + m * c2 * c2;
    for (int64_t i = 0; i < C; ++i) {
      for (int64_t o = 0; o < C; ++o) {
        const int64_t src = adjoint ? (o * C + i) : (i * C + o);  // W[i][o], or W[o][i] for the adjoint
        const T re = pw[(src * modes + m) * 2], im = adjoint ? -pw[(src * modes + m) * 2 + 1]
                                                             : pw[(src * modes + m) * 2 + 1];
        k[i * c2 + o] = re;
        k[i * c2 + C + o] = im;
        k[(C + i) * c2 + o] = -im;
        k[(C + i) * c2 + C + o] = re;
      }
    }
  }
  return packed;
}

// Row kernels (restrict pointers so that the compiler vectorises them), n = C values each.
// The truncated spectrum of rows [r0, r0 + rows) of src: spec[m] = [Re | Im] [rows, 2C]. Channels in chunks of
// kChunk accumulated over the P frames in registers (one store per value instead of one per frame).
constexpr int64_t kChunk = 16;

// n <= kChunk channels (a full chunk when n == kChunk, which the compiler unrolls and vectorises).
template <typename T>
inline void spectrum_chunk(int64_t n, const T* x, int64_t frame_stride, int64_t frames, const T* cs, const T* sn,
                           T* __restrict__ re, T* __restrict__ im) {
  T acc_re[kChunk] = {}, acc_im[kChunk] = {};
  for (int64_t t = 0; t < frames; ++t) {
    const T* __restrict__ xt = x + t * frame_stride;
    for (int64_t c = 0; c < n; ++c) {
      acc_re[c] += cs[t] * xt[c];
      acc_im[c] -= sn[t] * xt[c];
    }
  }
  for (int64_t c = 0; c < n; ++c) {
    re[c] = acc_re[c];
    im[c] = acc_im[c];
  }
}

template <typename T>
void block_spectrum(const T* src, const Layout& L, const DftTables<T>& dft, int64_t r0, int64_t rows, T* spec) {
  const int64_t c2 = 2 * L.channels, stride = L.comps * L.channels;
  for (int64_t m = 0; m < L.modes; ++m) {
    const T *cs = dft.cos.data() + m * L.frames, *sn = dft.sin.data() + m * L.frames;
    for (int64_t b = 0; b < rows; ++b) {
      T* re = spec + (m * rows + b) * c2;
      T* im = re + L.channels;
      const T* row = src + L.base(r0 + b);
      int64_t c = 0;
      for (; c + kChunk <= L.channels; c += kChunk) {
        spectrum_chunk(kChunk, row + c, stride, L.frames, cs, sn, re + c, im + c);
      }
      if (c < L.channels) spectrum_chunk(L.channels - c, row + c, stride, L.frames, cs, sn, re + c, im + c);
    }
  }
}

// One frame of one row, channels [c, c + n), n <= kChunk: the inverse real DFT of the mixed spectrum (modes mode_stride
// apart, [Re | Im] of C each), then out = residual + act(y) (and pre <- y when pre is given), from registers.
template <typename T>
struct InverseRow {
  int64_t mode_stride, channels, modes;
  bool leaky;
};

template <typename T>
inline void inverse_chunk(int64_t n, const InverseRow<T>& info, const T* spectrum, const T* cs, const T* sn,
                          const T* __restrict__ residual, T* __restrict__ out, T* __restrict__ pre) {
  T y[kChunk] = {};
  for (int64_t m = 0; m < info.modes; ++m) {
    const T* __restrict__ re = spectrum + m * info.mode_stride;
    const T* __restrict__ im = re + info.channels;
    for (int64_t c = 0; c < n; ++c) y[c] += cs[m] * re[c] - sn[m] * im[c];
  }
  if (pre != nullptr) {
    for (int64_t c = 0; c < n; ++c) pre[c] = y[c];
  }
  if (info.leaky) {
    for (int64_t c = 0; c < n; ++c) out[c] = residual[c] + (y[c] < T(0) ? T(kLeakySlope) * y[c] : y[c]);
  } else {
    for (int64_t c = 0; c < n; ++c) out[c] = residual[c] + y[c];
  }
}

// The per-mode complex mixing of a block's spectrum: mixed[m] = spec[m] @ mixing[m] ([rows, 2C] each).
template <typename T>
void mix_block(const T* spec, T* mixed, const at::Tensor& mixing, const Layout& L, int64_t rows,
               const at::TensorOptions& opts) {
  const int64_t c2 = 2 * L.channels;
  for (int64_t m = 0; m < L.modes; ++m) {
    at::Tensor o = at::from_blob(mixed + m * rows * c2, {rows, c2}, opts);
    at::mm_out(o, at::from_blob(const_cast<T*>(spec) + m * rows * c2, {rows, c2}, opts), mixing[m]);
  }
}

// Rows [r0, r0 + rows): out = residual + act(inverse DFT of the mixed spectrum) (pre <- the inverse DFT if given).
template <typename T>
void inverse_block(const T* mixed, const T* residual, T* out, T* pre, const Layout& L, const DftTables<T>& dft,
                   int64_t r0, int64_t rows, bool leaky) {
  const int64_t c2 = 2 * L.channels;
  const InverseRow<T> row_info{rows * c2, L.channels, L.modes, leaky};
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t base = L.base(r0 + b);
    for (int64_t t = 0; t < L.frames; ++t) {
      const int64_t off = base + t * L.comps * L.channels;
      const T *cs = dft.inverse_cos.data() + t * L.modes, *sn = dft.inverse_sin.data() + t * L.modes;
      const T* spectrum = mixed + b * c2;
      for (int64_t c = 0; c < L.channels; c += kChunk) {
        const int64_t n = std::min(kChunk, L.channels - c);
        inverse_chunk(n, row_info, spectrum + c, cs, sn, residual + off + c, out + off + c,
                      pre != nullptr ? pre + off + c : nullptr);
      }
    }
  }
}

// Forward, a block of rows at a time: out = x + act(K x), pre <- K x (leaky only).
template <typename T>
void forward_pass(const T* x, T* out, T* pre, const at::Tensor& mixing, const Layout& L, bool leaky,
                  const at::TensorOptions& opts) {
  const DftTables<T> dft(L.frames, L.modes);
  const int64_t c2 = 2 * L.channels, block_rows = L.block_rows();
  parallel_for_below_autograd(0, L.num_blocks(), 1, [&](int64_t blk_begin, int64_t blk_end) {
    std::vector<T> spec(L.modes * block_rows * c2), mixed(L.modes * block_rows * c2);
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      const int64_t r0 = blk * block_rows, rows = std::min(block_rows, L.rows() - r0);
      block_spectrum(x, L, dft, r0, rows, spec.data());
      mix_block(spec.data(), mixed.data(), mixing, L, rows, opts);
      inverse_block(mixed.data(), x, out, pre, L, dft, r0, rows, leaky);
    }
  });
}

// grad_pre = grad_out * LeakyReLU'(pre) on rows [r0, r0 + rows) (slope at pre <= 0, as PyTorch's leaky_relu_backward).
template <typename T>
void leaky_relu_grad_block(const T* grad, const T* pre, T* grad_pre, const Layout& L, int64_t r0, int64_t rows) {
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t base = L.base(r0 + b);
    for (int64_t t = 0; t < L.frames; ++t) {
      const int64_t off = base + t * L.comps * L.channels;
      const T *__restrict__ g = grad + off, *__restrict__ p = pre + off;
      T* __restrict__ out = grad_pre + off;
      for (int64_t c = 0; c < L.channels; ++c) out[c] = p[c] > T(0) ? g[c] : T(kLeakySlope) * g[c];
    }
  }
}

// Backward in one pass over blocks of rows: grad_pre = grad_out * act'(pre), grad_x = grad_out + K^H grad_pre, and
// dL/dW from the spectra of x and grad_pre, accumulated per group of blocks and added in group order.
// grad_pre may alias grad_out when there is no activation (pre == nullptr). Returns dL/dW [C, C, I, 2].
template <typename T>
at::Tensor backward_pass(const T* grad_out, const T* x, const T* pre, T* grad_pre, T* grad_x,
                         const at::Tensor& adjoint_mixing, const Layout& L, const at::TensorOptions& opts) {
  const DftTables<T> dft(L.frames, L.modes);
  const int64_t c2 = 2 * L.channels, block_rows = L.block_rows(), num_blocks = L.num_blocks();
  const int64_t num_groups = std::max<int64_t>(1, std::min(kMaxGroups, num_blocks));
  const int64_t per_group = (num_blocks + num_groups - 1) / num_groups;
  at::Tensor partial = at::zeros({num_groups, L.modes, c2, c2}, opts);
  parallel_for_below_autograd(0, num_groups, 1, [&](int64_t g_begin, int64_t g_end) {
    std::vector<T> gs(L.modes * block_rows * c2), xs(L.modes * block_rows * c2), mixed(L.modes * block_rows * c2);
    for (int64_t g = g_begin; g < g_end; ++g) {
      T* part = partial.data_ptr<T>() + g * L.modes * c2 * c2;
      for (int64_t blk = g * per_group; blk < std::min(num_blocks, (g + 1) * per_group); ++blk) {
        const int64_t r0 = blk * block_rows, rows = std::min(block_rows, L.rows() - r0);
        if (pre != nullptr) leaky_relu_grad_block(grad_out, pre, grad_pre, L, r0, rows);
        block_spectrum<T>(grad_pre, L, dft, r0, rows, gs.data());
        mix_block(gs.data(), mixed.data(), adjoint_mixing, L, rows, opts);
        inverse_block<T>(mixed.data(), grad_out, grad_x, nullptr, L, dft, r0, rows, false);
        block_spectrum(x, L, dft, r0, rows, xs.data());
        for (int64_t m = 0; m < L.modes; ++m) {
          const at::Tensor xm = at::from_blob(xs.data() + m * rows * c2, {rows, c2}, opts);
          const at::Tensor gm = at::from_blob(gs.data() + m * rows * c2, {rows, c2}, opts);
          at::Tensor part_m = at::from_blob(part + m * c2 * c2, {c2, c2}, opts);
          add_transposed_product(part_m, xm, gm, dft.inverse[m]);
        }
      }
    }
  });
  at::Tensor q = partial[0].clone();
  for (int64_t g = 1; g < num_groups; ++g) q.add_(partial[g]);
  const int64_t C = L.channels;
  const at::Tensor rr = q.narrow(1, 0, C).narrow(2, 0, C), ii = q.narrow(1, C, C).narrow(2, C, C);
  const at::Tensor ri = q.narrow(1, 0, C).narrow(2, C, C), ir = q.narrow(1, C, C).narrow(2, 0, C);
  return at::stack({rr + ii, ri - ir}, -1).permute({1, 2, 0, 3}).contiguous();  // [C, C, I, 2]
}

std::tuple<at::Tensor, at::Tensor> temporal_residual_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                                 bool leaky) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain ATen calls inside, no autograd
  const Layout L = layout_of(x, weight);
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty_like(xc);
  at::Tensor pre = leaky ? at::empty_like(xc) : at::empty({0}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "temporal_residual_forward_cpu", [&] {
    forward_pass<scalar_t>(xc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), leaky ? pre.data_ptr<scalar_t>() : nullptr,
                           packed_mixing<scalar_t>(weight, false), L, leaky, xc.options());
  });
  return {out, pre};
}

std::tuple<at::Tensor, at::Tensor> temporal_residual_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                                  const at::Tensor& pre, const at::Tensor& weight,
                                                                  bool leaky) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain ATen calls inside, no autograd
  const Layout L = layout_of(x, weight);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "temporal_residual_backward: grad_out ", grad_out.sizes(),
              " does not match x ", x.sizes());
  TORCH_CHECK(!leaky || pre.sizes() == x.sizes(), "temporal_residual_backward: the stored pre-activation is missing");
  const at::Tensor xc = x.contiguous(), g = grad_out.contiguous().to(x.scalar_type());
  at::Tensor grad_pre = leaky ? at::empty_like(xc) : g;
  at::Tensor grad_x = at::empty_like(xc), grad_w;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "temporal_residual_backward_cpu", [&] {
    const at::Tensor pre_c = leaky ? pre.contiguous() : pre;
    grad_w = backward_pass<scalar_t>(g.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                                     leaky ? pre_c.data_ptr<scalar_t>() : nullptr, grad_pre.data_ptr<scalar_t>(),
                                     grad_x.data_ptr<scalar_t>(), packed_mixing<scalar_t>(weight, true), L,
                                     xc.options());
  });
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(egno_fast, CPU, m) {
  m.impl("temporal_residual_forward", &temporal_residual_forward_cpu);
  m.impl("temporal_residual_backward", &temporal_residual_backward_cpu);
}

}  // namespace egno_fast
