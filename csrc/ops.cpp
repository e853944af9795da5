// The operator schemas of the "cpp" backend (torch.library, namespace egno_fast) and the Python module that loads
// them. Implementations register per device: csrc/cpu/*.cpp (CPU), csrc/cuda_bindings.cpp (CUDA builds). Fake
// (meta) kernels and autograd formulas live with each op in egno_fast/ops/, so the ops run under torch.compile.
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/buffer_pool.h"

TORCH_LIBRARY(egno_fast, m) {
  // The weight arguments are named as the fields of egno_fast.ops.egnn_edge.EGNNEdgeWeights and
  // egno_fast.ops.egnn_node.EGNNNodeWeights (Python passes them by name; a test compares the names). The backward
  // ops return the gradients of the forward's inputs in the forward's order. egnn_edge_forward takes the transposed
  // CSR (sender_rowptr, sender_perm) only so that its backward has it among the forward's inputs. edge_clamp: the
  // bound of each component of every coordinate message r phi (the layer's "edge" clamp), None: no clamp.
  // edge_shift: [E, 3] added to r = x_i - x_j of each (sorted) edge in every frame (periodic images), None: none;
  // it receives no gradient.
  m.def(
      "egnn_edge_forward(Tensor a, Tensor b, Tensor x, Tensor edge_attr, Tensor w_dist, Tensor w_edge, Tensor w_msg, "
      "Tensor b_msg, Tensor w_coord_hidden, Tensor b_coord_hidden, Tensor w_coord_out, Tensor b_coord_out, "
      "Tensor rowptr, Tensor sender, Tensor receiver, Tensor sender_rowptr, Tensor sender_perm, "
      "bool store_activations, float? edge_clamp=None, Tensor? edge_shift=None) "
      "-> (Tensor msg_sum, Tensor coord_sum, Tensor activations)");
  m.def(
      "egnn_edge_backward(Tensor g_msg, Tensor g_coord, Tensor activations, Tensor a, Tensor b, Tensor x, "
      "Tensor edge_attr, Tensor w_dist, Tensor w_edge, Tensor w_msg, Tensor b_msg, Tensor w_coord_hidden, "
      "Tensor b_coord_hidden, Tensor w_coord_out, Tensor b_coord_out, Tensor rowptr, Tensor sender, "
      "Tensor receiver, Tensor sender_rowptr, Tensor sender_perm, float? edge_clamp=None, Tensor? edge_shift=None) "
      "-> Tensor[]");
  m.def(
      "egnn_node_forward(Tensor h, Tensor msg_sum, Tensor coord_sum, Tensor x, Tensor v, Tensor degree, "
      "Tensor w_vel_hidden, Tensor b_vel_hidden, Tensor w_vel_out, Tensor b_vel_out, Tensor w_node_hidden, "
      "Tensor b_node_hidden, Tensor w_node_out, Tensor b_node_out, int clamp_mode=0, float clamp_value=100.) "
      "-> (Tensor x_new, Tensor h_new, Tensor activations)");
  m.def(
      "egnn_node_backward(Tensor g_x_new, Tensor g_h_new, Tensor activations, Tensor h, Tensor msg_sum, "
      "Tensor coord_sum, Tensor v, Tensor degree, Tensor w_vel_hidden, Tensor b_vel_hidden, Tensor w_vel_out, "
      "Tensor b_vel_out, Tensor w_node_hidden, Tensor b_node_hidden, Tensor w_node_out, Tensor b_node_out, "
      "int clamp_mode=0, float clamp_value=100.) -> Tensor[]");
  m.def("temporal_residual_forward(Tensor x, Tensor weight, bool leaky) -> (Tensor out, Tensor pre)");
  m.def(
      "temporal_residual_backward(Tensor grad_out, Tensor x, Tensor pre, Tensor weight, bool leaky) "
      "-> (Tensor grad_x, Tensor grad_weight)");
  m.def("receiver_csr(Tensor receiver, int num_nodes) -> (Tensor rowptr, Tensor perm)");
  m.def("radius_graph(Tensor pos, float cutoff, Tensor? batch=None, Tensor? box=None) -> Tensor");
  m.def("knn_graph(Tensor pos, int k, Tensor? batch=None, Tensor? box=None) -> Tensor");
  // minimum images in cells of any shape ([G, 3, 3] lattice vectors as rows, and their inverses): edge_index and
  // the integer images [E, 3] of each edge (cpu/periodic_graph_cpu.cpp)
  m.def("periodic_radius_graph(Tensor pos, float cutoff, Tensor cell, Tensor inverse, Tensor? batch=None) "
        "-> (Tensor edge_index, Tensor images)");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef EGNO_FAST_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "egno_fast C++/CUDA extension: registers the torch.ops.egno_fast operators";
  m.def("build_info", &build_info, "how this extension was built: {'cuda': bool, 'openmp': bool}");
  m.def("empty_cache", &egno_fast::empty_cache, "frees the CPU kernels' cached work buffers; returns the bytes freed");
  m.def("cached_bytes", &egno_fast::cached_bytes, "bytes held by the CPU kernels' buffer cache");
}
