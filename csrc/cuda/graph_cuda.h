// Plain-pointer launchers of the CUDA graph builders (no torch headers: nvcc compiles this in CI without torch).
// Every pointer is a device pointer; `stream` is a cudaStream_t. The per-point logic is in common/cell_grid.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../common/cell_grid.h"

namespace egno_fast {
namespace cuda {

// Bytes of scratch that stable_sort_by_key needs for n keys.
size_t stable_sort_workspace_bytes(int64_t n);

// Stable sort of keys in [0, num_keys): sorted_keys [n] and order [n] (input position of each sorted key).
// keys_scratch [n] and order_scratch [n] are temporary buffers.
void stable_sort_by_key(const int64_t* keys, int64_t n, int64_t num_keys, int64_t* sorted_keys, int64_t* order,
                        int64_t* order_scratch, void* workspace, size_t workspace_bytes, void* stream);

// offsets [num_keys + 1]: offsets[k] = first position of key k in sorted_keys [n].
void offsets_from_sorted(const int64_t* sorted_keys, int64_t n, int64_t num_keys, int64_t* offsets, void* stream);

// keys [n]: the cell key of each point (positions float or double [n, 3]; batch [n] or null).
void cell_keys(const float* pos, const int64_t* batch, int64_t n, CellGrid grid, int64_t* keys, void* stream);
void cell_keys(const double* pos, const int64_t* batch, int64_t n, CellGrid grid, int64_t* keys, void* stream);

// counts [n]: the number of radius neighbours of each point. sorted_pos [n, 3]: positions in cell order.
void radius_counts(const float* pos, const int64_t* batch, int64_t n, CellGrid grid, const int64_t* cell_start,
                   const int64_t* cell_points, const float* sorted_pos, double r2, int64_t* counts, void* stream);
void radius_counts(const double* pos, const int64_t* batch, int64_t n, CellGrid grid, const int64_t* cell_start,
                   const int64_t* cell_points, const double* sorted_pos, double r2, int64_t* counts, void* stream);

// Writes edge_index [2, E] (row 0 senders, sorted within each receiver; row 1 receivers) from row offsets [n + 1].
void radius_fill(const float* pos, const int64_t* batch, int64_t n, CellGrid grid, const int64_t* cell_start,
                 const int64_t* cell_points, const float* sorted_pos, double r2, const int64_t* offsets, int64_t num_edges, int64_t* edges,
                 void* stream);
void radius_fill(const double* pos, const int64_t* batch, int64_t n, CellGrid grid, const int64_t* cell_start,
                 const int64_t* cell_points, const double* sorted_pos, double r2, const int64_t* offsets, int64_t num_edges, int64_t* edges,
                 void* stream);

// nearest [n, k] (sorted by index in each row) and counts [n] of the k nearest; best_d2 [n, k] is scratch.
void knn_rows(const float* pos, const int64_t* batch, int64_t n, CellGrid grid, const int64_t* cell_start,
              const int64_t* cell_points, const float* sorted_pos, int64_t k, double* best_d2, int64_t* nearest, int64_t* counts, void* stream);
void knn_rows(const double* pos, const int64_t* batch, int64_t n, CellGrid grid, const int64_t* cell_start,
              const int64_t* cell_points, const double* sorted_pos, int64_t k, double* best_d2, int64_t* nearest, int64_t* counts, void* stream);

// Compacts rows of a [n, k] table with row offsets [n + 1] into edge_index [2, E].
void compact_rows(const int64_t* table, int64_t n, int64_t k, const int64_t* offsets, int64_t num_edges,
                  int64_t* edges, void* stream);

// In place: values [n] -> inclusive prefix sums (workspace from inclusive_scan_workspace_bytes).
size_t inclusive_scan_workspace_bytes(int64_t n);
void inclusive_scan(int64_t* values, int64_t n, void* workspace, size_t workspace_bytes, void* stream);

}  // namespace cuda
}  // namespace egno_fast
