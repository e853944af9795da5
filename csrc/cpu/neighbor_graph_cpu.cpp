// Radius and k-nearest-neighbour graphs on the CPU by cell lists (csrc/common/cell_grid.h), returned already sorted
// by receiver (egno_fast/ops/neighbor_graph.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "exact_arithmetic.h"  // distances rounded as the reference rounds them (before the shared cell-list code)
#include "../common/cell_grid.h"
#include "../graph_inputs.h"
#include "counting_sort.h"

namespace egno_fast {
namespace {

// Points binned by cell key: cell_start [graphs * cells + 1], cell_points (indices sorted by key) and the
// positions in that order.
template <typename T>
struct Bins {
  std::vector<int64_t> start, points;
  std::vector<T> sorted_pos;
};

template <typename T>
Bins<T> bin_points(const T* pos, const int64_t* batch, int64_t n, const CellGrid& g) {
  const int64_t num_cells = g.num_graphs * cells_per_graph(g);
  std::vector<int64_t> keys(n);
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t cell[3];
      point_cell(pos, i, g, cell);
      keys[i] = cell_key(batch != nullptr ? batch[i] : 0, cell, g);
    }
  });
  Bins<T> bins{std::vector<int64_t>(num_cells + 1), std::vector<int64_t>(n), std::vector<T>(3 * n)};
  counting_sort(keys.data(), n, num_cells, bins.start.data(), bins.points.data());
  for (int64_t s = 0; s < n; ++s) std::copy(pos + 3 * bins.points[s], pos + 3 * bins.points[s] + 3, &bins.sorted_pos[3 * s]);
  return bins;
}

template <typename T>
CellGrid grid_for(const at::Tensor& pos, const GraphQuery& q, double min_cell, double points_per_cell) {
  double lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
  const T* p = pos.data_ptr<T>();
  const int64_t n = pos.size(0);
  for (int a = 0; a < 3; ++a) {
    lo[a] = hi[a] = n > 0 ? static_cast<double>(p[a]) : 0.0;
  }
  for (int64_t i = 1; i < n; ++i) {
    for (int a = 0; a < 3; ++a) {
      lo[a] = std::min(lo[a], static_cast<double>(p[3 * i + a]));
      hi[a] = std::max(hi[a], static_cast<double>(p[3 * i + a]));
    }
  }
  return make_grid(lo, hi, q.periodic ? q.box : nullptr, q.num_graphs, n, min_cell, points_per_cell);
}

// The senders of every receiver in one pass, queried in cell order (neighbouring queries read the same cells):
// chunks of queries collect their rows (sorted by sender) in their own vectors, which are then copied into
// edge_index [2, E] in receiver order (receivers ascending, senders ascending).
template <typename T>
at::Tensor radius_rows_to_edges(int64_t n, const T* pos, const int64_t* batch, const CellGrid& grid,
                                const Bins<T>& bins, double r2, const at::TensorOptions& opts) {
  constexpr int64_t kChunk = 1024;
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
  std::vector<std::vector<int64_t>> chunk_senders(num_chunks);
  std::vector<int64_t> offsets(n + 1, 0), row_start(n);  // row_start: where receiver i's row begins in its chunk
  struct Appender {
    std::vector<int64_t>* out;
    void operator()(int64_t j) { out->push_back(j); }
  };
  at::parallel_for(0, num_chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      std::vector<int64_t>& out = chunk_senders[c];
      for (int64_t slot = c * kChunk; slot < std::min(n, (c + 1) * kChunk); ++slot) {
        const int64_t i = bins.points[slot];
        const size_t start = out.size();
        Appender append{&out};
        visit_radius(i, pos, batch, grid, bins.start.data(), bins.points.data(), bins.sorted_pos.data(), r2, append);
        std::sort(out.begin() + start, out.end());
        row_start[i] = static_cast<int64_t>(start);
        offsets[i + 1] = static_cast<int64_t>(out.size() - start);
      }
    }
  });
  std::vector<int64_t> slot_of(n);
  for (int64_t slot = 0; slot < n; ++slot) slot_of[bins.points[slot]] = slot;
  for (int64_t i = 0; i < n; ++i) offsets[i + 1] += offsets[i];
  at::Tensor edges = at::empty({2, offsets[n]}, opts);
  int64_t* senders = edges.data_ptr<int64_t>();
  int64_t* receivers = senders + offsets[n];
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t* row = chunk_senders[slot_of[i] / kChunk].data() + row_start[i];
      std::copy(row, row + (offsets[i + 1] - offsets[i]), senders + offsets[i]);
      std::fill(receivers + offsets[i], receivers + offsets[i + 1], i);
    }
  });
  return edges;
}

at::Tensor radius_graph_cpu(const at::Tensor& pos, double cutoff, const std::optional<at::Tensor>& batch,
                            const std::optional<at::Tensor>& box) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain ATen calls inside, no autograd
  const GraphQuery q = check_query_inputs(pos, batch, box, "radius_graph");
  check_cutoff(cutoff, q);
  const at::Tensor p = pos.contiguous();
  const at::Tensor b = q.batch_tensor;
  at::Tensor edges;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "radius_graph_cpu", [&] {
    const CellGrid grid = grid_for<scalar_t>(p, q, cutoff * (1.0 + 1e-9), 0.5);
    const auto bins = bin_points(p.data_ptr<scalar_t>(), q.has_batch ? b.data_ptr<int64_t>() : nullptr, p.size(0), grid);
    edges = radius_rows_to_edges(p.size(0), p.data_ptr<scalar_t>(), q.has_batch ? b.data_ptr<int64_t>() : nullptr,
                                 grid, bins, cutoff * cutoff, p.options().dtype(at::kLong));
  });
  return edges;
}

at::Tensor knn_graph_cpu(const at::Tensor& pos, int64_t k, const std::optional<at::Tensor>& batch,
                         const std::optional<at::Tensor>& box) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain ATen calls inside, no autograd
  const GraphQuery q = check_query_inputs(pos, batch, box, "knn_graph");
  TORCH_CHECK(k >= 1, "knn_graph: k must be >= 1, got ", k);
  const at::Tensor p = pos.contiguous();
  const int64_t n = p.size(0);
  const int64_t* graph_of = q.has_batch ? q.batch_tensor.data_ptr<int64_t>() : nullptr;
  std::vector<int64_t> found(n + 1, 0), nearest(n * k);
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "knn_graph_cpu", [&] {
    const scalar_t* pp = p.data_ptr<scalar_t>();
    // cells of about k / 2 points: the k nearest usually lie within the first ring of cells
    const CellGrid grid = grid_for<scalar_t>(p, q, 0.0, std::max<double>(1.0, 0.5 * static_cast<double>(k)));
    const auto bins = bin_points(pp, graph_of, n, grid);
    at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
      std::vector<double> d2(k);
      for (int64_t i = begin; i < end; ++i) {
        int64_t* row = nearest.data() + i * k;
        found[i + 1] = knn_query(i, pp, graph_of, grid, bins.start.data(), bins.points.data(), bins.sorted_pos.data(), k,
                                 d2.data(), row);
        std::sort(row, row + found[i + 1]);
      }
    });
  });
  for (int64_t i = 0; i < n; ++i) found[i + 1] += found[i];
  at::Tensor edges = at::empty({2, found[n]}, p.options().dtype(at::kLong));
  int64_t* senders = edges.data_ptr<int64_t>();
  int64_t* receivers = senders + found[n];
  for (int64_t i = 0; i < n; ++i) {
    std::copy(nearest.data() + i * k, nearest.data() + i * k + (found[i + 1] - found[i]), senders + found[i]);
    std::fill(receivers + found[i], receivers + found[i + 1], i);
  }
  return edges;
}

}  // namespace

TORCH_LIBRARY_IMPL(egno_fast, CPU, m) {
  m.impl("radius_graph", &radius_graph_cpu);
  m.impl("knn_graph", &knn_graph_cpu);
}

}  // namespace egno_fast
