// Stable counting sort, shared by the receiver CSR and the cell lists of the neighbour lists.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace egno_fast {

// Stable counting sort of keys in [0, num_keys): offsets [num_keys + 1] and the order (a permutation of 0..n-1).
inline void counting_sort(const int64_t* keys, int64_t n, int64_t num_keys, int64_t* offsets, int64_t* order) {
  std::fill(offsets, offsets + num_keys + 1, 0);
  for (int64_t e = 0; e < n; ++e) ++offsets[keys[e] + 1];
  for (int64_t k = 0; k < num_keys; ++k) offsets[k + 1] += offsets[k];
  std::vector<int64_t> next(offsets, offsets + num_keys);
  for (int64_t e = 0; e < n; ++e) order[next[keys[e]]++] = e;
}

}  // namespace egno_fast
