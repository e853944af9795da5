// SiLU and its derivative, with a fast float exponential that compilers vectorise (polynomial on [-ln2/2, ln2/2]
// scaled by 2^n built from the exponent bits; relative error below 2e-7). double uses the libm exponential.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "hd.h"

namespace egno_fast {

EGNO_HD float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;  // two one-sided clamps: vmaxps / vminps, and NaN passes through
  x = x > 88.0f ? 88.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // x - n ln2 in two parts (Cody-Waite)
  float p = 1.98412698e-4f;
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

EGNO_HD double exp_approx(double x) { return std::exp(x); }

template <typename T>
EGNO_HD T sigmoid(T x) {
  return T(1) / (T(1) + exp_approx(-x));
}

template <typename T>
EGNO_HD T silu(T x) {
  return x * sigmoid(x);
}

// d silu / dx = s (1 + x (1 - s)), s = sigmoid(x)
template <typename T>
EGNO_HD T silu_grad(T x) {
  const T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

}  // namespace egno_fast
