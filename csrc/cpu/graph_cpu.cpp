// Graph construction on the CPU: the receiver-sorted CSR (stable counting sort) and radius / k-nearest-neighbour
// graphs by cell lists (csrc/common/cell_grid.h), returned already sorted by receiver.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../common/cell_grid.h"
#include "../graph_inputs.h"

namespace egno_fast {
namespace {

// Stable counting sort of keys in [0, num_keys): offsets [num_keys + 1] and the order (a permutation of 0..n-1).
void counting_sort(const int64_t* keys, int64_t n, int64_t num_keys, int64_t* offsets, int64_t* order) {
  std::fill(offsets, offsets + num_keys + 1, 0);
  for (int64_t e = 0; e < n; ++e) ++offsets[keys[e] + 1];
  for (int64_t k = 0; k < num_keys; ++k) offsets[k + 1] += offsets[k];
  std::vector<int64_t> next(offsets, offsets + num_keys);
  for (int64_t e = 0; e < n; ++e) order[next[keys[e]]++] = e;
}

std::tuple<at::Tensor, at::Tensor> receiver_csr_cpu(const at::Tensor& receiver, int64_t num_nodes) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain ATen calls inside, no autograd
  check_csr_inputs(receiver, num_nodes);
  const at::Tensor keys = receiver.to(at::kLong).contiguous();
  at::Tensor rowptr = at::empty({num_nodes + 1}, keys.options());
  at::Tensor perm = at::empty({keys.size(0)}, keys.options());
  counting_sort(keys.data_ptr<int64_t>(), keys.size(0), num_nodes, rowptr.data_ptr<int64_t>(),
                perm.data_ptr<int64_t>());
  return {rowptr, perm};
}

// Points binned by cell key: cell_start [graphs * cells + 1], cell_points (indices sorted by key).
struct Bins {
  std::vector<int64_t> start, points;
};

template <typename T>
Bins bin_points(const T* pos, const int64_t* batch, int64_t n, const CellGrid& g) {
  const int64_t num_cells = g.num_graphs * cells_per_graph(g);
  std::vector<int64_t> keys(n);
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t cell[3];
      point_cell(pos, i, g, cell);
      keys[i] = cell_key(batch != nullptr ? batch[i] : 0, cell, g);
    }
  });
  Bins bins{std::vector<int64_t>(num_cells + 1), std::vector<int64_t>(n)};
  counting_sort(keys.data(), n, num_cells, bins.start.data(), bins.points.data());
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

// Rows of senders per receiver (counts, then fills) into edge_index [2, E]: receivers ascending, senders ascending.
template <typename Query>
at::Tensor rows_to_edges(int64_t n, const Query& query, const at::TensorOptions& opts) {
  std::vector<int64_t> counts(n + 1, 0);
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) counts[i + 1] = query.count(i);
  });
  for (int64_t i = 0; i < n; ++i) counts[i + 1] += counts[i];
  at::Tensor edges = at::empty({2, counts[n]}, opts);
  int64_t* senders = edges.data_ptr<int64_t>();
  int64_t* receivers = senders + counts[n];
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      query.fill(i, senders + counts[i]);
      std::sort(senders + counts[i], senders + counts[i + 1]);
      std::fill(receivers + counts[i], receivers + counts[i + 1], i);
    }
  });
  return edges;
}

template <typename T>
struct RadiusQuery {
  const T* pos;
  const int64_t* batch;
  CellGrid grid;
  const Bins* bins;
  double r2;
  int64_t count(int64_t i) const {
    struct Counter {
      int64_t n = 0;
      void operator()(int64_t) { ++n; }
    } counter;
    visit_radius(i, pos, batch, grid, bins->start.data(), bins->points.data(), r2, counter);
    return counter.n;
  }
  void fill(int64_t i, int64_t* out) const {
    struct Writer {
      int64_t* out;
      void operator()(int64_t j) { *out++ = j; }
    } writer{out};
    visit_radius(i, pos, batch, grid, bins->start.data(), bins->points.data(), r2, writer);
  }
};

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
    const Bins bins = bin_points(p.data_ptr<scalar_t>(), q.has_batch ? b.data_ptr<int64_t>() : nullptr, p.size(0), grid);
    const RadiusQuery<scalar_t> query{p.data_ptr<scalar_t>(), q.has_batch ? b.data_ptr<int64_t>() : nullptr, grid,
                                      &bins, cutoff * cutoff};
    edges = rows_to_edges(p.size(0), query, p.options().dtype(at::kLong));
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
    const Bins bins = bin_points(pp, graph_of, n, grid);
    at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
      std::vector<double> d2(k);
      for (int64_t i = begin; i < end; ++i) {
        int64_t* row = nearest.data() + i * k;
        found[i + 1] = knn_query(i, pp, graph_of, grid, bins.start.data(), bins.points.data(), k, d2.data(), row);
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
  m.impl("receiver_csr", &receiver_csr_cpu);
  m.impl("radius_graph", &radius_graph_cpu);
  m.impl("knn_graph", &knn_graph_cpu);
}

}  // namespace egno_fast
