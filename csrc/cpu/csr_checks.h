// The CSR invariants the CPU kernels rely on, checked by the kernels themselves in O(N + E) (a graph may have been
// changed by hand after it was built). A broken invariant raises ValueError in Python, never a crash.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace egno_fast {

// rowptr: contiguous int64 [N + 1], rowptr[0] = 0, non-decreasing, rowptr[N] = E.
inline void check_offsets(const char* op, const char* name, const at::Tensor& rowptr, int64_t num_nodes,
                          int64_t num_edges) {
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.size(0) == num_nodes + 1 && rowptr.scalar_type() == at::kLong &&
                        rowptr.is_contiguous() && rowptr.device().is_cpu(),
                    op, ": ", name, " must be a contiguous int64 CPU tensor [N + 1] = [", num_nodes + 1, "], got ",
                    rowptr.scalar_type(), " ", rowptr.sizes());
  const int64_t* r = rowptr.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(r[0] == 0 && r[num_nodes] == num_edges, op, ": ", name, " must start at 0 and end at E = ",
                    num_edges, ", got ", r[0], " and ", r[num_nodes]);
  for (int64_t i = 0; i < num_nodes; ++i) {
    TORCH_CHECK_VALUE(r[i] <= r[i + 1], op, ": ", name, " must be non-decreasing, but ", name, "[", i, "] = ", r[i],
                      " > ", name, "[", i + 1, "] = ", r[i + 1]);
  }
}

// index: contiguous int64 [count] with values in [0, bound).
inline void check_indices(const char* op, const char* name, const at::Tensor& index, int64_t count, int64_t bound) {
  TORCH_CHECK_VALUE(index.dim() == 1 && index.size(0) == count && index.scalar_type() == at::kLong &&
                        index.is_contiguous() && index.device().is_cpu(),
                    op, ": ", name, " must be a contiguous int64 CPU tensor [", count, "], got ", index.scalar_type(),
                    " ", index.sizes());
  const int64_t* v = index.data_ptr<int64_t>();
  for (int64_t k = 0; k < count; ++k) {
    TORCH_CHECK_VALUE(v[k] >= 0 && v[k] < bound, op, ": ", name, "[", k, "] = ", v[k], " is outside [0, ", bound,
                      ")");
  }
}

// perm: a permutation of 0..count-1.
inline void check_permutation(const char* op, const char* name, const at::Tensor& perm, int64_t count) {
  check_indices(op, name, perm, count, count);
  std::vector<bool> seen(count, false);
  const int64_t* v = perm.data_ptr<int64_t>();
  for (int64_t k = 0; k < count; ++k) {
    TORCH_CHECK_VALUE(!seen[v[k]], op, ": ", name, " must be a permutation, but ", v[k], " appears twice");
    seen[v[k]] = true;
  }
}

// Row i of the CSR (positions rowptr[i]..rowptr[i + 1]) holds entries whose owner is i: values[k] == i, or
// values[order[k]] == i with an order (the transposed CSR). rowptr and order must have been checked.
inline void check_row_owners(const char* op, const char* what, const at::Tensor& rowptr, const at::Tensor& values,
                             const at::Tensor* order) {
  const int64_t* r = rowptr.data_ptr<int64_t>();
  const int64_t* v = values.data_ptr<int64_t>();
  const int64_t* o = order ? order->data_ptr<int64_t>() : nullptr;
  for (int64_t i = 0; i + 1 < rowptr.size(0); ++i) {
    for (int64_t k = r[i]; k < r[i + 1]; ++k) {
      const int64_t owner = v[o ? o[k] : k];
      TORCH_CHECK_VALUE(owner == i, op, ": ", what, " at position ", k, " is ", owner, " but the position lies in row ",
                        i, " of the CSR");
    }
  }
}

}  // namespace egno_fast
