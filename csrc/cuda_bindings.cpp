// CUDA implementations of the graph ops (built only when torch has CUDA): torch-facing glue that allocates with
// ATen and calls the plain-pointer launchers of csrc/cuda/graph_cuda.cu on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "cuda/graph_cuda.h"
#include "graph_inputs.h"

namespace egno_fast {
namespace {

void* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

int64_t* longs(const at::Tensor& t) { return t.data_ptr<int64_t>(); }

// Stable sort of int64 keys in [0, num_keys): (sorted keys, order).
std::tuple<at::Tensor, at::Tensor> sort_by_key(const at::Tensor& keys, int64_t num_keys) {
  const int64_t n = keys.numel();
  at::Tensor sorted = at::empty({n}, keys.options()), order = at::empty({n}, keys.options());
  at::Tensor scratch = at::empty({n}, keys.options());
  const size_t bytes = cuda::stable_sort_workspace_bytes(n);
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, keys.options().dtype(at::kByte));
  cuda::stable_sort_by_key(longs(keys), n, num_keys, longs(sorted), longs(order), longs(scratch),
                           workspace.data_ptr(), bytes, current_stream());
  return {sorted, order};
}

at::Tensor offsets_of(const at::Tensor& sorted, int64_t num_keys) {
  at::Tensor offsets = at::empty({num_keys + 1}, sorted.options());
  cuda::offsets_from_sorted(longs(sorted), sorted.numel(), num_keys, longs(offsets), current_stream());
  return offsets;
}

std::tuple<at::Tensor, at::Tensor> receiver_csr_cuda(const at::Tensor& receiver, int64_t num_nodes) {
  check_csr_inputs(receiver, num_nodes);
  const c10::cuda::CUDAGuard guard(receiver.device());
  const at::Tensor keys = receiver.to(at::kLong).contiguous();
  auto [sorted, perm] = sort_by_key(keys, num_nodes);
  return {offsets_of(sorted, num_nodes), perm};
}

struct DeviceBins {
  CellGrid grid;
  at::Tensor start, points, sorted_pos;  // sorted_pos: positions in cell order [n, 3]
};

DeviceBins bin_points(const at::Tensor& pos, const GraphQuery& q, double min_cell, double points_per_cell) {
  double lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
  if (pos.size(0) > 0) {
    const auto range = at::aminmax(pos.to(at::kDouble), 0);
    const at::Tensor low = std::get<0>(range).cpu(), high = std::get<1>(range).cpu();
    for (int a = 0; a < 3; ++a) {
      lo[a] = low.data_ptr<double>()[a];
      hi[a] = high.data_ptr<double>()[a];
    }
  }
  DeviceBins bins;
  bins.grid = make_grid(lo, hi, q.periodic ? q.box : nullptr, q.num_graphs, pos.size(0), min_cell, points_per_cell);
  const int64_t num_cells = q.num_graphs * cells_per_graph(bins.grid);
  at::Tensor keys = at::empty({pos.size(0)}, pos.options().dtype(at::kLong));
  const int64_t* batch = q.has_batch ? longs(q.batch_tensor) : nullptr;
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "cell_keys_cuda", [&] {
    cuda::cell_keys(pos.data_ptr<scalar_t>(), batch, pos.size(0), bins.grid, longs(keys), current_stream());
  });
  auto [sorted, order] = sort_by_key(keys, num_cells);
  bins.start = offsets_of(sorted, num_cells);
  bins.points = order;
  bins.sorted_pos = pos.index_select(0, order).contiguous();
  return bins;
}

// Row counts [n + 1] (counts[0] = 0) -> row offsets, in place; returns the number of edges.
int64_t offsets_in_place(at::Tensor& counts) {
  const int64_t n = counts.numel() - 1;
  const size_t bytes = cuda::inclusive_scan_workspace_bytes(n);
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, counts.options().dtype(at::kByte));
  cuda::inclusive_scan(longs(counts) + 1, n, workspace.data_ptr(), bytes, current_stream());
  return counts[n].item<int64_t>();
}

at::Tensor radius_graph_cuda(const at::Tensor& pos, double cutoff, const std::optional<at::Tensor>& batch,
                             const std::optional<at::Tensor>& box) {
  const GraphQuery q = check_query_inputs(pos, batch, box, "radius_graph");
  check_cutoff(cutoff, q);
  const c10::cuda::CUDAGuard guard(pos.device());
  const at::Tensor p = pos.contiguous();
  const DeviceBins bins = bin_points(p, q, cutoff * (1.0 + 1e-9), 0.5);
  const int64_t n = p.size(0);
  const int64_t* graph_of = q.has_batch ? longs(q.batch_tensor) : nullptr;
  at::Tensor offsets = at::zeros({n + 1}, p.options().dtype(at::kLong));
  at::Tensor edges;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "radius_graph_cuda", [&] {
    cuda::radius_counts(p.data_ptr<scalar_t>(), graph_of, n, bins.grid, longs(bins.start), longs(bins.points),
                        bins.sorted_pos.data_ptr<scalar_t>(), cutoff * cutoff, longs(offsets) + 1, current_stream());
    const int64_t num_edges = offsets_in_place(offsets);
    edges = at::empty({2, num_edges}, offsets.options());
    cuda::radius_fill(p.data_ptr<scalar_t>(), graph_of, n, bins.grid, longs(bins.start), longs(bins.points),
                      bins.sorted_pos.data_ptr<scalar_t>(), cutoff * cutoff, longs(offsets), num_edges, longs(edges),
                      current_stream());
  });
  return edges;
}

at::Tensor knn_graph_cuda(const at::Tensor& pos, int64_t k, const std::optional<at::Tensor>& batch,
                          const std::optional<at::Tensor>& box) {
  const GraphQuery q = check_query_inputs(pos, batch, box, "knn_graph");
  TORCH_CHECK(k >= 1, "knn_graph: k must be >= 1, got ", k);
  const c10::cuda::CUDAGuard guard(pos.device());
  const at::Tensor p = pos.contiguous();
  const DeviceBins bins = bin_points(p, q, 0.0, std::max<double>(1.0, 0.5 * static_cast<double>(k)));
  const int64_t n = p.size(0);
  const int64_t* graph_of = q.has_batch ? longs(q.batch_tensor) : nullptr;
  at::Tensor best_d2 = at::empty({n, k}, p.options().dtype(at::kDouble));
  at::Tensor nearest = at::empty({n, k}, p.options().dtype(at::kLong));
  at::Tensor offsets = at::zeros({n + 1}, p.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "knn_graph_cuda", [&] {
    cuda::knn_rows(p.data_ptr<scalar_t>(), graph_of, n, bins.grid, longs(bins.start), longs(bins.points),
                   bins.sorted_pos.data_ptr<scalar_t>(), k, best_d2.data_ptr<double>(), longs(nearest),
                   longs(offsets) + 1, current_stream());
  });
  const int64_t num_edges = offsets_in_place(offsets);
  at::Tensor edges = at::empty({2, num_edges}, offsets.options());
  cuda::compact_rows(longs(nearest), n, k, longs(offsets), num_edges, longs(edges), current_stream());
  return edges;
}

}  // namespace

TORCH_LIBRARY_IMPL(egno_fast, CUDA, m) {
  m.impl("receiver_csr", &receiver_csr_cuda);
  m.impl("radius_graph", &radius_graph_cuda);
  m.impl("knn_graph", &knn_graph_cuda);
}

}  // namespace egno_fast
