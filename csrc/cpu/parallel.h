// at::parallel_for for bodies that call ATen operators: OpenMP worker threads do not inherit the caller's
// thread-local dispatch state, so each body runs below autograd explicitly (the kernels' inner GEMMs write into
// preallocated tiles with out= variants, which autograd would refuse).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace egno_fast {

template <typename F>
void parallel_for_below_autograd(int64_t begin, int64_t end, int64_t grain, const F& body) {
  at::parallel_for(begin, end, grain, [&](int64_t chunk_begin, int64_t chunk_end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const at::NoGradGuard no_grad;
    body(chunk_begin, chunk_end);
  });
}

}  // namespace egno_fast
