// Minimum-image radius graph in periodic cells of any shape (triclinic too) on the CPU, by cell lists in fractional
// coordinates (egno_fast/ops/neighbor_graph.py, periodic_radius_graph).
//
// Each graph g has its cell (lattice vectors as rows) and the cell's inverse, both given by the caller. A point's
// fractional coordinates f = x C^-1, wrapped into [0, 1), fall into one of nb_a bins per axis a, with
// nb_a <= width_a / cutoff (width_a: the distance between the cell's faces across axis a). A pair within the cutoff
// then differs by at most 1 / nb_a in fractional coordinate a (the cutoff is at most half every width: the caller
// checks), so its points lie in neighbouring bins (wrapping around). For each candidate pair the images are decided
// as the reference decides them: n0 = -round((x_i - x_j) C^-1), then the nearest of the 27 images n0 + {0, -1, 1}^3
// (the first of equal ones in that order), an edge if its squared distance ((rx^2 + ry^2) + rz^2) is within cutoff^2.
// Returns edge_index [2, E] (receivers ascending, senders ascending within a receiver) and the images [E, 3] int64
// (the shift of each edge is images @ C, formed by the caller).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <vector>

#include "exact_arithmetic.h"  // distances and images rounded as the reference rounds them

namespace egno_fast {
namespace {

struct PeriodicBins {
  std::vector<std::array<int64_t, 3>> dims;  // bins per axis of each graph
  std::vector<int64_t> first;                // the first bin key of each graph
  std::vector<int64_t> start, points;        // CSR of the points by bin key
  std::vector<std::array<int64_t, 3>> bin;   // each point's bin
};

// Bins per axis for a graph: at most width / cutoff each (at least 1), then fewer until the graph holds about
// points / 0.5 + 64 bins, so memory stays linear in the number of points.
std::array<int64_t, 3> bin_dims(const double* cell, double cutoff, int64_t points) {
  const double* a = cell;
  const double* b = cell + 3;
  const double* c = cell + 6;
  const double cross[3][3] = {{b[1] * c[2] - b[2] * c[1], b[2] * c[0] - b[0] * c[2], b[0] * c[1] - b[1] * c[0]},
                              {c[1] * a[2] - c[2] * a[1], c[2] * a[0] - c[0] * a[2], c[0] * a[1] - c[1] * a[0]},
                              {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]}};
  const double volume = std::fabs(a[0] * cross[0][0] + a[1] * cross[0][1] + a[2] * cross[0][2]);
  std::array<double, 3> count{};
  double total = 1.0;
  for (int k = 0; k < 3; ++k) {
    const double area = std::sqrt(cross[k][0] * cross[k][0] + cross[k][1] * cross[k][1] + cross[k][2] * cross[k][2]);
    count[k] = std::max(1.0, std::floor(volume / area / cutoff));
    total *= count[k];
  }
  const double budget = static_cast<double>(points) / 0.5 + 64.0;
  if (total > budget) {
    const double factor = std::cbrt(total / budget);
    for (int k = 0; k < 3; ++k) count[k] = std::max(1.0, std::floor(count[k] / factor));
  }
  return {static_cast<int64_t>(count[0]), static_cast<int64_t>(count[1]), static_cast<int64_t>(count[2])};
}

// The distinct bins at offsets -1, 0, 1 from b along an axis of n bins (wrapping; fewer when n < 3).
int64_t axis_neighbours(int64_t b, int64_t n, int64_t out[3]) {
  if (n == 1) {
    out[0] = 0;
    return 1;
  }
  if (n == 2) {
    out[0] = 0;
    out[1] = 1;
    return 2;
  }
  out[0] = (b + n - 1) % n;
  out[1] = b;
  out[2] = (b + 1) % n;
  return 3;
}

struct Edge {
  int64_t sender;
  int64_t image[3];
};

std::tuple<at::Tensor, at::Tensor> periodic_radius_graph_cpu(const at::Tensor& pos, double cutoff,
                                                              const at::Tensor& cell, const at::Tensor& inverse,
                                                              const std::optional<at::Tensor>& batch) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain ATen calls inside, no autograd
  TORCH_CHECK(pos.dim() == 2 && pos.size(1) == 3 && pos.is_floating_point(),
              "periodic_radius_graph: pos must be a floating-point [N, 3] tensor, got ", pos.sizes());
  TORCH_CHECK(cell.dim() == 3 && cell.size(1) == 3 && cell.size(2) == 3 && cell.size(0) >= 1 &&
                  inverse.sizes() == cell.sizes(),
              "periodic_radius_graph: cell and inverse must be [G, 3, 3], got ", cell.sizes(), " and ",
              inverse.sizes());
  TORCH_CHECK(std::isfinite(cutoff) && cutoff > 0, "periodic_radius_graph: cutoff must be positive and finite, got ",
              cutoff);
  const int64_t n = pos.size(0), num_cells = cell.size(0);
  const at::Tensor p = pos.to(at::kDouble).contiguous();
  const at::Tensor cells = cell.to(at::kDouble).contiguous(), inverses = inverse.to(at::kDouble).contiguous();
  std::vector<int64_t> graph_of(n, 0);
  if (batch.has_value()) {
    TORCH_CHECK(batch->dim() == 1 && batch->size(0) == n, "periodic_radius_graph: batch must be [N] with N = ", n);
    const at::Tensor b = batch->to(at::kLong).contiguous();
    std::copy(b.data_ptr<int64_t>(), b.data_ptr<int64_t>() + n, graph_of.begin());
  }
  int64_t num_graphs = 1;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(graph_of[i] >= 0 && (i == 0 || graph_of[i] >= graph_of[i - 1]),
                "periodic_radius_graph: batch must hold sorted, non-negative graph ids");
    num_graphs = std::max(num_graphs, graph_of[i] + 1);
  }
  TORCH_CHECK(num_cells == 1 || num_cells == num_graphs, "periodic_radius_graph: ", num_cells, " cells for ",
              num_graphs, " graphs (give one cell, or one per graph)");
  const double* x = p.data_ptr<double>();
  const double* cell_data = cells.data_ptr<double>();
  const double* inverse_data = inverses.data_ptr<double>();
  const auto cell_of = [&](int64_t g) { return cell_data + 9 * (num_cells == 1 ? 0 : g); };
  const auto inverse_of = [&](int64_t g) { return inverse_data + 9 * (num_cells == 1 ? 0 : g); };

  // bins per graph, each point's bin (from its wrapped fractional coordinates), and the CSR of bins
  PeriodicBins bins;
  std::vector<int64_t> graph_points(num_graphs, 0);
  for (int64_t i = 0; i < n; ++i) ++graph_points[graph_of[i]];
  bins.first.assign(num_graphs + 1, 0);
  for (int64_t g = 0; g < num_graphs; ++g) {
    bins.dims.push_back(bin_dims(cell_of(g), cutoff, graph_points[g]));
    bins.first[g + 1] = bins.first[g] + bins.dims[g][0] * bins.dims[g][1] * bins.dims[g][2];
  }
  bins.bin.resize(n);
  std::vector<int64_t> keys(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t g = graph_of[i];
    const double* inv = inverse_of(g);
    for (int a = 0; a < 3; ++a) {
      const double f = x[3 * i] * inv[a] + x[3 * i + 1] * inv[3 + a] + x[3 * i + 2] * inv[6 + a];
      const double wrapped = f - std::floor(f);
      const int64_t count = bins.dims[g][a];
      bins.bin[i][a] = std::min<int64_t>(count - 1, std::max<int64_t>(0, static_cast<int64_t>(wrapped * count)));
    }
    keys[i] = bins.first[g] + (bins.bin[i][0] * bins.dims[g][1] + bins.bin[i][1]) * bins.dims[g][2] + bins.bin[i][2];
  }
  bins.start.assign(bins.first[num_graphs] + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++bins.start[keys[i] + 1];
  for (size_t k = 1; k < bins.start.size(); ++k) bins.start[k] += bins.start[k - 1];
  bins.points.resize(n);
  std::vector<int64_t> fill(bins.start.begin(), bins.start.end() - 1);
  for (int64_t i = 0; i < n; ++i) bins.points[fill[keys[i]]++] = i;  // ascending point order within a bin

  const double cutoff2 = cutoff * cutoff;
  std::vector<std::vector<Edge>> rows(n);
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = graph_of[i];
      const double* c = cell_of(g);
      const double* inv = inverse_of(g);
      int64_t around[3][3], count[3];
      for (int a = 0; a < 3; ++a) count[a] = axis_neighbours(bins.bin[i][a], bins.dims[g][a], around[a]);
      std::vector<Edge>& row = rows[i];
      for (int64_t u = 0; u < count[0]; ++u) {
        for (int64_t w = 0; w < count[1]; ++w) {
          for (int64_t z = 0; z < count[2]; ++z) {
            const int64_t key = bins.first[g] + (around[0][u] * bins.dims[g][1] + around[1][w]) * bins.dims[g][2] +
                                around[2][z];
            for (int64_t s = bins.start[key]; s < bins.start[key + 1]; ++s) {
              const int64_t j = bins.points[s];
              if (j == i) continue;
              const double d[3] = {x[3 * i] - x[3 * j], x[3 * i + 1] - x[3 * j + 1], x[3 * i + 2] - x[3 * j + 2]};
              double nearest[3];
              for (int a = 0; a < 3; ++a) {
                nearest[a] = -std::nearbyint(d[0] * inv[a] + d[1] * inv[3 + a] + d[2] * inv[6 + a]);
              }
              double best = INFINITY;
              int64_t image[3] = {0, 0, 0};
              static const int kOffsets[3] = {0, -1, 1};  // the reference's order of the 27 images
              for (int o0 : kOffsets) {
                for (int o1 : kOffsets) {
                  for (int o2 : kOffsets) {
                    const double m[3] = {nearest[0] + o0, nearest[1] + o1, nearest[2] + o2};
                    double r[3];
                    for (int a = 0; a < 3; ++a) r[a] = d[a] + ((m[0] * c[a] + m[1] * c[3 + a]) + m[2] * c[6 + a]);
                    const double d2 = (r[0] * r[0] + r[1] * r[1]) + r[2] * r[2];
                    if (d2 < best) {
                      best = d2;
                      for (int a = 0; a < 3; ++a) image[a] = static_cast<int64_t>(m[a]);
                    }
                  }
                }
              }
              if (best <= cutoff2) row.push_back({j, {image[0], image[1], image[2]}});
            }
          }
        }
      }
      std::sort(row.begin(), row.end(), [](const Edge& l, const Edge& r) { return l.sender < r.sender; });
    }
  });
  std::vector<int64_t> offsets(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) offsets[i + 1] = offsets[i] + static_cast<int64_t>(rows[i].size());
  const auto long_options = pos.options().dtype(at::kLong);
  at::Tensor edge_index = at::empty({2, offsets[n]}, long_options);
  at::Tensor images = at::empty({offsets[n], 3}, long_options);
  int64_t* senders = edge_index.data_ptr<int64_t>();
  int64_t* receivers = senders + offsets[n];
  int64_t* image_data = images.data_ptr<int64_t>();
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (size_t e = 0; e < rows[i].size(); ++e) {
        const int64_t k = offsets[i] + static_cast<int64_t>(e);
        senders[k] = rows[i][e].sender;
        receivers[k] = i;
        std::copy(rows[i][e].image, rows[i][e].image + 3, image_data + 3 * k);
      }
    }
  });
  return {edge_index, images};
}

}  // namespace

TORCH_LIBRARY_IMPL(egno_fast, CPU, m) { m.impl("periodic_radius_graph", &periodic_radius_graph_cpu); }

}  // namespace egno_fast
