// The receiver-sorted CSR on the CPU: a stable counting sort of the edges by receiver (egno_fast/ops/receiver_csr.py).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../graph_inputs.h"
#include "counting_sort.h"

namespace egno_fast {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(egno_fast, CPU, m) { m.impl("receiver_csr", &receiver_csr_cpu); }

}  // namespace egno_fast
