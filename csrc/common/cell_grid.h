// Cell lists for neighbour search: the per-point logic shared by the CPU build and the CUDA kernels.
//
// Points are binned into a uniform grid of cells (one grid per graph of the batch: the graph id is the leading part
// of the cell key). A radius query visits the <= 27 distinct cells around the point's cell; a k-nearest query visits
// rings of cells at growing Chebyshev distance until the k-th distance is below the ring's lower bound. Distances are
// computed in double (positions of any float dtype), with the minimum-image convention in an optional orthorhombic
// periodic box. Edges are j -> i for j != i; rows are later sorted by sender index (a canonical order).
#pragma once

#include <cmath>
#include <cstdint>

#include "hd.h"

namespace egno_fast {

struct CellGrid {
  double origin[3];  // lower corner of cell (0, 0, 0)
  double cell[3];    // cell edge lengths
  int64_t dims[3];   // cells per axis
  int64_t num_graphs;
  bool periodic;
  double box[3];     // periodic box lengths (periodic only)
};

EGNO_HD int64_t cells_per_graph(const CellGrid& g) { return g.dims[0] * g.dims[1] * g.dims[2]; }

EGNO_HD double min_image(double d, double box) { return d - box * rint(d / box); }

// |a - b|^2 of two points (3 coordinates each), minimum image if periodic.
template <typename T>
EGNO_HD double distance2(const T* a, const T* b, const CellGrid& g) {
  double total = 0.0;
  for (int c = 0; c < 3; ++c) {
    double d = static_cast<double>(a[c]) - static_cast<double>(b[c]);
    if (g.periodic) d = min_image(d, g.box[c]);
    total += d * d;
  }
  return total;
}

// The cell of coordinate p along an axis (wrapped into the box if periodic, clamped to the grid).
EGNO_HD int64_t axis_cell(double p, int axis, const CellGrid& g) {
  double u = (p - g.origin[axis]) / g.cell[axis];
  if (g.periodic) u -= static_cast<double>(g.dims[axis]) * floor(u / static_cast<double>(g.dims[axis]));
  int64_t c = static_cast<int64_t>(floor(u));
  return c < 0 ? 0 : (c >= g.dims[axis] ? g.dims[axis] - 1 : c);
}

template <typename T>
EGNO_HD void point_cell(const T* pos, int64_t i, const CellGrid& g, int64_t cell[3]) {
  for (int a = 0; a < 3; ++a) cell[a] = axis_cell(static_cast<double>(pos[3 * i + a]), a, g);
}

EGNO_HD int64_t cell_key(int64_t graph, const int64_t cell[3], const CellGrid& g) {
  return ((graph * g.dims[0] + cell[0]) * g.dims[1] + cell[1]) * g.dims[2] + cell[2];
}

// Cell index c + offset along an axis, or -1 if it lies outside a non-periodic grid.
EGNO_HD int64_t shifted_cell(int64_t c, int64_t offset, int axis, const CellGrid& g) {
  const int64_t n = g.dims[axis], s = c + offset;
  if (g.periodic) return ((s % n) + n) % n;
  return (s < 0 || s >= n) ? -1 : s;
}

// The distinct neighbour cells along an axis for a radius query: [first, first + count), wrapped if periodic.
EGNO_HD void axis_window(int64_t c, int axis, const CellGrid& g, int64_t* first, int64_t* count) {
  const int64_t n = g.dims[axis];
  if (g.periodic) {
    *first = n >= 3 ? -1 : -c;  // offsets relative to c; fewer than 3 cells: every cell once
    *count = n >= 3 ? 3 : n;
  } else {
    *first = c > 0 ? -1 : 0;
    *count = (c + 1 < n ? c + 1 : n - 1) - (c + *first) + 1;
  }
}

// Calls visit(j) for every point j != i of i's graph with |x_i - x_j|^2 <= r2. cell_start [num cells + 1],
// cell_points (point indices sorted by cell key) and sorted_pos (their positions in that order, [n, 3], so that a
// cell's points are read from contiguous memory) describe the binned points.
template <typename T, typename Visit>
EGNO_HD void visit_radius(int64_t i, const T* pos, const int64_t* batch, const CellGrid& g,
                          const int64_t* cell_start, const int64_t* cell_points, const T* sorted_pos, double r2,
                          Visit& visit) {
  int64_t home[3], first[3], count[3];
  point_cell(pos, i, g, home);
  for (int a = 0; a < 3; ++a) axis_window(home[a], a, g, &first[a], &count[a]);
  const int64_t graph = batch != nullptr ? batch[i] : 0;
  for (int64_t o0 = 0; o0 < count[0]; ++o0) {
    for (int64_t o1 = 0; o1 < count[1]; ++o1) {
      for (int64_t o2 = 0; o2 < count[2]; ++o2) {
        const int64_t cell[3] = {shifted_cell(home[0], first[0] + o0, 0, g),
                                 shifted_cell(home[1], first[1] + o1, 1, g),
                                 shifted_cell(home[2], first[2] + o2, 2, g)};
        const int64_t key = cell_key(graph, cell, g);
        for (int64_t s = cell_start[key]; s < cell_start[key + 1]; ++s) {
          const int64_t j = cell_points[s];
          if (j != i && distance2(pos + 3 * i, sorted_pos + 3 * s, g) <= r2) visit(j);
        }
      }
    }
  }
}

// Inserts (d2, j) into the list of the best `size` candidates, sorted by (d2, j), capped at k; a point already in the
// list (a periodic grid can reach a cell twice) is skipped. Returns the new size.
EGNO_HD int64_t insert_candidate(double d2, int64_t j, int64_t k, int64_t size, double* best_d2, int64_t* best_j) {
  for (int64_t s = 0; s < size; ++s) {
    if (best_j[s] == j) return size;
  }
  int64_t pos = size < k ? size : k - 1;
  if (size == k && (d2 > best_d2[k - 1] || (d2 == best_d2[k - 1] && j > best_j[k - 1]))) return size;
  while (pos > 0 && (best_d2[pos - 1] > d2 || (best_d2[pos - 1] == d2 && best_j[pos - 1] > j))) {
    best_d2[pos] = best_d2[pos - 1];
    best_j[pos] = best_j[pos - 1];
    --pos;
  }
  best_d2[pos] = d2;
  best_j[pos] = j;
  return size < k ? size + 1 : k;
}

// The k nearest points j != i of i's graph (fewer if the graph is smaller), sorted by (distance, index), searched
// ring by ring (binned points as for visit_radius). best_d2 and best_j hold k entries. Returns how many were found.
template <typename T>
EGNO_HD int64_t knn_query(int64_t i, const T* pos, const int64_t* batch, const CellGrid& g, const int64_t* cell_start,
                          const int64_t* cell_points, const T* sorted_pos, int64_t k, double* best_d2,
                          int64_t* best_j) {
  int64_t home[3];
  point_cell(pos, i, g, home);
  const int64_t graph = batch != nullptr ? batch[i] : 0;
  const double min_cell = fmin(g.cell[0], fmin(g.cell[1], g.cell[2]));
  int64_t reach = 0;  // the ring beyond which no cell is new
  for (int a = 0; a < 3; ++a) {
    const int64_t r = g.periodic ? g.dims[a] / 2 : (home[a] > g.dims[a] - 1 - home[a] ? home[a] : g.dims[a] - 1 - home[a]);
    reach = r > reach ? r : reach;
  }
  int64_t found = 0;
  for (int64_t ring = 0; ring <= reach; ++ring) {
    for (int64_t o0 = -ring; o0 <= ring; ++o0) {
      for (int64_t o1 = -ring; o1 <= ring; ++o1) {
        const bool inner = o0 > -ring && o0 < ring && o1 > -ring && o1 < ring;
        const int64_t step = inner ? 2 * ring : 1;  // on the ring's shell only
        for (int64_t o2 = -ring; o2 <= ring; o2 += (step > 0 ? step : 1)) {
          const int64_t cell[3] = {shifted_cell(home[0], o0, 0, g), shifted_cell(home[1], o1, 1, g),
                                   shifted_cell(home[2], o2, 2, g)};
          if (cell[0] < 0 || cell[1] < 0 || cell[2] < 0) continue;
          const int64_t key = cell_key(graph, cell, g);
          for (int64_t s = cell_start[key]; s < cell_start[key + 1]; ++s) {
            const int64_t j = cell_points[s];
            if (j != i) {
              found = insert_candidate(distance2(pos + 3 * i, sorted_pos + 3 * s, g), j, k, found, best_d2, best_j);
            }
          }
        }
      }
    }
    const double bound = static_cast<double>(ring) * min_cell;  // every point of a farther ring is at least this far
    if (found == k && best_d2[k - 1] < bound * bound) break;
  }
  return found;
}

// First position in sorted[0, n) whose value is >= key (CSR offsets from sorted keys, one thread per key).
EGNO_HD int64_t lower_bound(const int64_t* sorted, int64_t n, int64_t key) {
  int64_t low = 0, high = n;
  while (low < high) {
    const int64_t mid = low + (high - low) / 2;
    if (sorted[mid] < key) {
      low = mid + 1;
    } else {
      high = mid;
    }
  }
  return low;
}

// Sorts a short array in place (a row of senders).
EGNO_HD void insertion_sort(int64_t* values, int64_t n) {
  for (int64_t a = 1; a < n; ++a) {
    const int64_t v = values[a];
    int64_t b = a;
    while (b > 0 && values[b - 1] > v) {
      values[b] = values[b - 1];
      --b;
    }
    values[b] = v;
  }
}

// Grid over the points' bounding box [lo, hi] (or the periodic box) with cells of at least `min_cell`, grown until
// num_graphs * cells <= num_points / points_per_cell + 64: memory and time stay linear in the number of points.
inline CellGrid make_grid(const double lo[3], const double hi[3], const double* box, int64_t num_graphs,
                          int64_t num_points, double min_cell, double points_per_cell) {
  CellGrid g{};
  g.num_graphs = num_graphs;
  g.periodic = box != nullptr;
  const double budget = static_cast<double>(num_points) / points_per_cell + 64.0;
  double largest = 0.0;
  for (int a = 0; a < 3; ++a) largest = fmax(largest, g.periodic ? box[a] : hi[a] - lo[a]);
  double cell = fmax(min_cell, largest > 0.0 ? largest * 1e-6 : 1.0);
  for (int attempt = 0; attempt < 200; ++attempt) {
    double total = static_cast<double>(num_graphs);
    for (int a = 0; a < 3; ++a) {
      const double extent = g.periodic ? box[a] : hi[a] - lo[a];
      g.dims[a] = static_cast<int64_t>(floor(extent / cell)) + (g.periodic ? 0 : 1);
      if (g.dims[a] < 1) g.dims[a] = 1;
      g.origin[a] = g.periodic ? 0.0 : lo[a];
      g.cell[a] = g.periodic ? box[a] / static_cast<double>(g.dims[a]) : cell;
      if (g.periodic) g.box[a] = box[a];
      total *= static_cast<double>(g.dims[a]);
    }
    if (total <= budget) break;
    cell *= fmax(cbrt(total / budget), 1.01);
  }
  return g;
}

}  // namespace egno_fast
