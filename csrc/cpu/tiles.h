// Helpers shared by the tiled CPU kernels (egnn_edge_cpu.cpp, egnn_node_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <new>
#include <vector>

namespace egno_fast {

// Scratch memory for the tile GEMMs, 64-byte aligned. The BLAS kernels may round differently with their operands'
// alignment (seen with AVX-512 kernels: weight gradients changed in the last bits with the thread count), and a
// std::vector's alignment depends on where the allocator found room; aligned scratch keeps the results bitwise
// independent of the thread count and of the allocator.
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlignment{64};
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlignment)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlignment); }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};

template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

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

// out += alpha a^T b, a [rows, m] and b [rows, n]: a reduction over rows, in blocks of at most kReductionRows rows
// added in order. A kernel whose work is a single group runs on the calling thread, outside a parallel region, where
// the BLAS splits a long reduction across its own threads and so rounds differently with the thread count (seen with
// MKL from 1024 rows on); blocks this short are not split, so the weight gradients are bitwise independent of it.
constexpr int64_t kReductionRows = 512;
inline void add_transposed_product(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double alpha = 1.0) {
  const int64_t rows = a.size(0);
  for (int64_t r0 = 0; r0 < rows; r0 += kReductionRows) {
    const int64_t n = std::min(kReductionRows, rows - r0);
    out.addmm_(a.narrow(0, r0, n).t(), b.narrow(0, r0, n), /*beta=*/1, /*alpha=*/alpha);
  }
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
