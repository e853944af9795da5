// Helpers shared by the tiled CPU kernels (egnn_edge_cpu.cpp, egnn_node_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <initializer_list>

namespace egno_fast {

// The registered operators take tensors of any strides: their entry points make each input contiguous (free for a
// contiguous one) before the kernels read it densely.
inline void make_contiguous(std::initializer_list<at::Tensor*> tensors) {
  for (at::Tensor* t : tensors) *t = t->contiguous();
}

// A [rows, cols] row-major view of raw memory for the tile GEMMs (cheaper than narrowing and selecting tensors).
template <typename T>
inline at::Tensor tile_view(const T* data, int64_t rows, int64_t cols, const at::TensorOptions& options) {
  return at::from_blob(const_cast<T*>(data), {rows, cols}, options);
}

// Adds [G, ...] per-group partial sums in group order: deterministic for any thread count.
inline at::Tensor ordered_sum(const at::Tensor& partials) {
  at::Tensor total = partials[0].clone();
  for (int64_t g = 1; g < partials.size(0); ++g) total.add_(partials[g]);
  return total;
}

template <typename T>
inline T dot(int64_t n, const T* __restrict__ u, const T* __restrict__ v) {
  T sum = 0;
  for (int64_t h = 0; h < n; ++h) sum += u[h] * v[h];
  return sum;
}

}  // namespace egno_fast
