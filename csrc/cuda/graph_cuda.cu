// CUDA graph builders: thread indexing around the per-point logic of common/cell_grid.h, and CUB for the sorts and
// scans. Plain pointers only (see graph_cuda.h); csrc/cuda_bindings.cpp calls these from torch.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "graph_cuda.h"

namespace egno_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }
inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// Number of key bits the radix sort needs for keys in [0, num_keys).
inline int key_bits(int64_t num_keys) {
  int bits = 1;
  while (bits < 63 && (int64_t{1} << bits) < num_keys) ++bits;
  return bits;
}

__global__ void iota_kernel(int64_t* values, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) values[i] = i;
}

__global__ void offsets_kernel(const int64_t* sorted_keys, int64_t n, int64_t num_keys, int64_t* offsets) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k <= num_keys) offsets[k] = lower_bound(sorted_keys, n, k);
}

template <typename T>
__global__ void cell_keys_kernel(const T* pos, const int64_t* batch, int64_t n, CellGrid grid, int64_t* keys) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  int64_t cell[3];
  point_cell(pos, i, grid, cell);
  keys[i] = cell_key(batch != nullptr ? batch[i] : 0, cell, grid);
}

struct CountVisitor {
  int64_t count;
  __device__ void operator()(int64_t) { ++count; }
};

struct WriteVisitor {
  int64_t* out;
  __device__ void operator()(int64_t j) { *out++ = j; }
};

template <typename T>
__global__ void radius_count_kernel(const T* pos, const int64_t* batch, int64_t n, CellGrid grid,
                                    const int64_t* cell_start, const int64_t* cell_points, const T* sorted_pos,
                                    double r2, int64_t* counts) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  CountVisitor visitor{0};
  visit_radius(i, pos, batch, grid, cell_start, cell_points, sorted_pos, r2, visitor);
  counts[i] = visitor.count;
}

template <typename T>
__global__ void radius_fill_kernel(const T* pos, const int64_t* batch, int64_t n, CellGrid grid,
                                   const int64_t* cell_start, const int64_t* cell_points, const T* sorted_pos,
                                   double r2, const int64_t* offsets, int64_t num_edges, int64_t* edges) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  WriteVisitor visitor{edges + offsets[i]};
  visit_radius(i, pos, batch, grid, cell_start, cell_points, sorted_pos, r2, visitor);
  insertion_sort(edges + offsets[i], offsets[i + 1] - offsets[i]);
  for (int64_t e = offsets[i]; e < offsets[i + 1]; ++e) edges[num_edges + e] = i;
}

template <typename T>
__global__ void knn_kernel(const T* pos, const int64_t* batch, int64_t n, CellGrid grid, const int64_t* cell_start,
                           const int64_t* cell_points, const T* sorted_pos, int64_t k, double* best_d2,
                           int64_t* nearest, int64_t* counts) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t found =
      knn_query(i, pos, batch, grid, cell_start, cell_points, sorted_pos, k, best_d2 + i * k, nearest + i * k);
  insertion_sort(nearest + i * k, found);
  counts[i] = found;
}

__global__ void compact_kernel(const int64_t* table, int64_t n, int64_t k, const int64_t* offsets, int64_t num_edges,
                               int64_t* edges) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  for (int64_t e = offsets[i]; e < offsets[i + 1]; ++e) {
    edges[e] = table[i * k + (e - offsets[i])];
    edges[num_edges + e] = i;
  }
}

}  // namespace

size_t stable_sort_workspace_bytes(int64_t n) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr),
                                  static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr), n);
  return bytes;
}

void stable_sort_by_key(const int64_t* keys, int64_t n, int64_t num_keys, int64_t* sorted_keys, int64_t* order,
                        int64_t* order_scratch, void* workspace, size_t workspace_bytes, void* stream) {
  if (n == 0) return;
  iota_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(order_scratch, n);
  // LSD radix sort: stable, so equal keys keep their input order
  cub::DeviceRadixSort::SortPairs(workspace, workspace_bytes, keys, sorted_keys, order_scratch, order, n, 0,
                                  key_bits(num_keys), as_stream(stream));
}

void offsets_from_sorted(const int64_t* sorted_keys, int64_t n, int64_t num_keys, int64_t* offsets, void* stream) {
  offsets_kernel<<<blocks_for(num_keys + 1), kThreads, 0, as_stream(stream)>>>(sorted_keys, n, num_keys, offsets);
}

size_t inclusive_scan_workspace_bytes(int64_t n) {
  size_t bytes = 0;
  cub::DeviceScan::InclusiveSum(nullptr, bytes, static_cast<int64_t*>(nullptr), static_cast<int64_t*>(nullptr), n);
  return bytes;
}

void inclusive_scan(int64_t* values, int64_t n, void* workspace, size_t workspace_bytes, void* stream) {
  if (n == 0) return;
  cub::DeviceScan::InclusiveSum(workspace, workspace_bytes, values, values, n, as_stream(stream));
}

void compact_rows(const int64_t* table, int64_t n, int64_t k, const int64_t* offsets, int64_t num_edges,
                  int64_t* edges, void* stream) {
  if (n == 0) return;
  compact_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(table, n, k, offsets, num_edges, edges);
}

#define EGNO_FAST_GRAPH_LAUNCHERS(T)                                                                                \
  void cell_keys(const T* pos, const int64_t* batch, int64_t n, CellGrid grid, int64_t* keys, void* stream) {      \
    if (n == 0) return;                                                                                            \
    cell_keys_kernel<T><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(pos, batch, n, grid, keys);             \
  }                                                                                                                \
  void radius_counts(const T* pos, const int64_t* batch, int64_t n, CellGrid grid, const int64_t* cell_start,      \
                     const int64_t* cell_points, const T* sorted_pos, double r2, int64_t* counts, void* stream) {   \
    if (n == 0) return;                                                                                            \
    radius_count_kernel<T><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(pos, batch, n, grid, cell_start,     \
                                                                               cell_points, sorted_pos, r2, counts); \
  }                                                                                                                \
  void radius_fill(const T* pos, const int64_t* batch, int64_t n, CellGrid grid, const int64_t* cell_start,        \
                   const int64_t* cell_points, const T* sorted_pos, double r2, const int64_t* offsets,             \
                   int64_t num_edges, int64_t* edges, void* stream) {                                              \
    if (n == 0) return;                                                                                            \
    radius_fill_kernel<T><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(                                      \
        pos, batch, n, grid, cell_start, cell_points, sorted_pos, r2, offsets, num_edges, edges);                  \
  }                                                                                                                \
  void knn_rows(const T* pos, const int64_t* batch, int64_t n, CellGrid grid, const int64_t* cell_start,           \
                const int64_t* cell_points, const T* sorted_pos, int64_t k, double* best_d2, int64_t* nearest,     \
                int64_t* counts, void* stream) {                                                                   \
    if (n == 0) return;                                                                                            \
    knn_kernel<T><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(pos, batch, n, grid, cell_start, cell_points, \
                                                                      sorted_pos, k, best_d2, nearest, counts);   \
  }

EGNO_FAST_GRAPH_LAUNCHERS(float)
EGNO_FAST_GRAPH_LAUNCHERS(double)

}  // namespace cuda
}  // namespace egno_fast
