// SiLU with its derivative over arrays, for the CPU kernels.
//
// silu_with_grad(n, pre, act, grad): act = pre * s, grad = s (1 + pre (1 - s)) with s = sigmoid(pre).
// float on an AVX2 + FMA build runs 8 lanes of explicit intrinsics: a Cephes-style exponential (Cody-Waite
// reduction, degree-5 polynomial; relative error below 2e-7 on the clamped range [-87, 87]) and a true division.
// gcc's auto-vectorisation of the same scalar code turned the clamps into compare-and-blend chains and ran about
// 2.5x slower on the development machine (csrc/README.md). Other types and builds use the scalar loop (libm exp).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EGNO_FAST_AVX2 1
#endif

namespace egno_fast {

template <typename T>
inline void silu_with_grad(int64_t n, const T* __restrict__ pre, T* __restrict__ act, T* __restrict__ grad) {
  for (int64_t i = 0; i < n; ++i) {
    const T s = T(1) / (T(1) + std::exp(-pre[i]));
    act[i] = pre[i] * s;
    grad[i] = s * (T(1) + pre[i] * (T(1) - s));
  }
}

#ifdef EGNO_FAST_AVX2
namespace avx2 {

inline __m256 splat(float v) { return _mm256_set1_ps(v); }

// exp(x), 8 lanes; x clamped to [-87, 87] (results and their reciprocals stay normal); NaN stays NaN (max / min
// return their second operand when one is NaN).
inline __m256 exp(__m256 x) {
  x = _mm256_min_ps(splat(87.0f), _mm256_max_ps(splat(-87.0f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, splat(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, splat(0.693359375f), x);  // x - n ln 2 in two parts
  r = _mm256_fnmadd_ps(n, splat(-2.12194440e-4f), r);
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 p01 = _mm256_fmadd_ps(splat(1.9875691500e-4f), r, splat(1.3981999507e-3f));
  const __m256 p23 = _mm256_fmadd_ps(splat(8.3334519073e-3f), r, splat(4.1665795894e-2f));
  const __m256 p45 = _mm256_fmadd_ps(splat(1.6666665459e-1f), r, splat(5.0000001201e-1f));
  const __m256 p = _mm256_fmadd_ps(_mm256_fmadd_ps(p01, r2, p23), r2, p45);
  const __m256 e = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, splat(1.0f)));  // e^r = 1 + r + r^2 p(r)
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(e, _mm256_castsi256_ps(bits));  // * 2^n
}

inline void silu_with_grad8(const float* pre, float* act, float* grad) {
  const __m256 x = _mm256_loadu_ps(pre), one = splat(1.0f);
  const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp(_mm256_sub_ps(_mm256_setzero_ps(), x))));
  _mm256_storeu_ps(act, _mm256_mul_ps(x, s));
  _mm256_storeu_ps(grad, _mm256_mul_ps(s, _mm256_fmadd_ps(x, _mm256_sub_ps(one, s), one)));
}

}  // namespace avx2

template <>
inline void silu_with_grad<float>(int64_t n, const float* __restrict__ pre, float* __restrict__ act,
                                  float* __restrict__ grad) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) avx2::silu_with_grad8(pre + i, act + i, grad + i);
  if (i < n) {  // the last n mod 8 values through a padded block
    alignas(32) float in[8] = {}, out_act[8], out_grad[8];
    for (int64_t k = i; k < n; ++k) in[k - i] = pre[k];
    avx2::silu_with_grad8(in, out_act, out_grad);
    for (int64_t k = i; k < n; ++k) {
      act[k] = out_act[k - i];
      grad[k] = out_grad[k - i];
    }
  }
}
#endif

}  // namespace egno_fast
