"""The ops, one module each: its plain-PyTorch reference, its entry point per backend ("reference", "cpp",
"triton"), the autograd and fake kernels of its C++ operators, and one dispatching function.

=====================  ==============================  ===============================  ============================
op                     functional entry point          C++ (csrc/cpu, csrc/cuda)        Triton (kernels/)
=====================  ==============================  ===============================  ============================
temporal convolution   :func:`temporal_residual`       temporal_conv_cpu.cpp            temporal_conv.py
EGNN edge aggregation  :func:`egnn_edge_sums`          egnn_edge_cpu.cpp                egnn_edge.py
EGNN node update       :func:`egnn_node_update`        egnn_node_cpu.cpp                (the reference, in PyTorch)
EGNN layer             :func:`egnn_layer` (egnn.py)    the two above                    the two above
receiver CSR           :func:`sort_by_receiver`,       receiver_csr_cpu.cpp,            --
                       :func:`build_graph`             graph_cuda.cu
neighbour lists        :func:`radius_graph`,           neighbor_graph_cpu.cpp,          --
                       :func:`knn_graph`,              periodic_graph_cpu.cpp,
                       :func:`periodic_radius_graph`   graph_cuda.cu (periodic: one
                                                       orthorhombic cell)
=====================  ==============================  ===============================  ============================

Ops take tensors and named weight structures (:mod:`.weights` and each op's NamedTuple) and return named results;
the nn modules (:mod:`egno_fast.nn`) own the parameters and call the ops.
"""
from .egnn import EGNNLayerOutput, EGNNLayerWeights, EGNNOptions, EGNO_OPTIONS, egnn_layer, egnn_layer_reference
from .egnn_edge import EdgeSums, EGNNEdgeWeights, egnn_edge_reference, egnn_edge_sums
from .egnn_node import EGNNNodeWeights, NodeUpdate, egnn_node_reference, egnn_node_update
from .neighbor_graph import (PeriodicEdges, knn_graph, knn_graph_reference, periodic_radius_graph,
                             periodic_radius_graph_reference, perpendicular_widths, radius_graph,
                             radius_graph_reference)
from .receiver_csr import ReceiverCSR, build_graph, receiver_csr_reference, sort_by_receiver
from .temporal_conv import temporal_conv_reference, temporal_residual, temporal_residual_reference
from .weights import LinearWeights, MLPWeights

__all__ = ["EdgeSums", "EGNNEdgeWeights", "egnn_edge_sums", "egnn_edge_reference", "EGNNLayerOutput",
           "EGNNLayerWeights",
           "EGNNOptions", "EGNO_OPTIONS", "egnn_layer", "egnn_layer_reference", "EGNNNodeWeights", "NodeUpdate",
           "egnn_node_update", "egnn_node_reference", "knn_graph", "knn_graph_reference", "radius_graph",
           "radius_graph_reference", "PeriodicEdges", "periodic_radius_graph", "periodic_radius_graph_reference",
           "perpendicular_widths", "ReceiverCSR", "build_graph", "sort_by_receiver", "receiver_csr_reference",
           "temporal_conv_reference", "temporal_residual", "temporal_residual_reference", "LinearWeights",
           "MLPWeights"]
