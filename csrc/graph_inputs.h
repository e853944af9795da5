// Input checks and options of the graph builders, shared by the CPU and CUDA bindings (host code, ATen).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace egno_fast {

struct GraphQuery {
  bool has_batch = false;
  at::Tensor batch_tensor;  // int64 [N], contiguous, on pos's device (if has_batch)
  int64_t num_graphs = 1;
  bool periodic = false;
  double box[3] = {0, 0, 0};
};

inline void check_csr_inputs(const at::Tensor& receiver, int64_t num_nodes) {
  TORCH_CHECK(receiver.dim() == 1, "receiver_csr: receiver must be [E], got ", receiver.sizes());
  TORCH_CHECK(receiver.scalar_type() == at::kLong || receiver.scalar_type() == at::kInt,
              "receiver_csr: receiver must be int64 or int32, got ", receiver.scalar_type());
  TORCH_CHECK(num_nodes >= 0, "receiver_csr: num_nodes must be >= 0, got ", num_nodes);
  if (receiver.numel() > 0) {
    const auto range = at::aminmax(receiver);
    const int64_t low = std::get<0>(range).item<int64_t>(), high = std::get<1>(range).item<int64_t>();
    TORCH_CHECK(low >= 0 && high < num_nodes, "receiver_csr: receiver indices span [", low, ", ", high, "] but there are ",
                num_nodes, " nodes");
  }
}

inline GraphQuery check_query_inputs(const at::Tensor& pos, const std::optional<at::Tensor>& batch,
                                     const std::optional<at::Tensor>& box, const char* name) {
  TORCH_CHECK(pos.dim() == 2 && pos.size(1) == 3, name, ": pos must be [N, 3], got ", pos.sizes());
  TORCH_CHECK(pos.is_floating_point(), name, ": pos must be floating point, got ", pos.scalar_type());
  TORCH_CHECK(pos.numel() == 0 || at::isfinite(pos).all().item<bool>(), name, ": pos contains NaN or infinite values");
  GraphQuery q;
  if (batch.has_value() && batch->defined()) {
    TORCH_CHECK(batch->dim() == 1 && batch->size(0) == pos.size(0), name, ": batch must be [N] with N = ", pos.size(0),
                ", got ", batch->sizes());
    TORCH_CHECK(batch->scalar_type() == at::kLong || batch->scalar_type() == at::kInt, name,
                ": batch must be int64 or int32, got ", batch->scalar_type());
    TORCH_CHECK(batch->device() == pos.device(), name, ": batch is on ", batch->device(), ", pos on ", pos.device());
    q.has_batch = true;
    q.batch_tensor = batch->to(at::kLong).contiguous();
    if (pos.size(0) > 0) {
      const auto range = at::aminmax(q.batch_tensor);
      TORCH_CHECK(std::get<0>(range).item<int64_t>() >= 0, name, ": batch contains negative graph ids");
      q.num_graphs = std::get<1>(range).item<int64_t>() + 1;
    }
  }
  if (box.has_value() && box->defined()) {
    TORCH_CHECK(box->numel() == 3, name, ": box must hold the 3 edge lengths of an orthorhombic periodic box, got ",
                box->sizes());
    const at::Tensor lengths = box->to(at::kCPU, at::kDouble).contiguous();
    for (int a = 0; a < 3; ++a) {
      q.box[a] = lengths.data_ptr<double>()[a];
      TORCH_CHECK(std::isfinite(q.box[a]) && q.box[a] > 0, name, ": box lengths must be positive and finite, got ",
                  q.box[a]);
    }
    q.periodic = true;
  }
  return q;
}

inline void check_cutoff(double cutoff, const GraphQuery& q) {
  TORCH_CHECK(std::isfinite(cutoff) && cutoff > 0, "radius_graph: cutoff must be positive and finite, got ", cutoff);
  if (q.periodic) {
    const double smallest = std::min(q.box[0], std::min(q.box[1], q.box[2]));
    TORCH_CHECK(2 * cutoff <= smallest, "radius_graph: with a periodic box the cutoff (", cutoff,
                ") must be at most half the smallest box length (", smallest,
                "), so that each pair has one image within the cutoff");
  }
}

}  // namespace egno_fast
