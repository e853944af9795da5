"""Pure-PyTorch references: the ground truth that every fused kernel is tested against.

They are written for clarity, not speed, and follow docs/design.md §1 exactly.
"""
from .egnn import egnn_layer_reference
from .graph import knn_graph_reference, radius_graph_reference, receiver_csr_reference
from .temporal_conv import temporal_conv_reference, temporal_residual_reference
from .time_embedding import sinusoidal_time_embedding

__all__ = ["egnn_layer_reference", "knn_graph_reference", "radius_graph_reference", "receiver_csr_reference",
           "temporal_conv_reference", "temporal_residual_reference", "sinusoidal_time_embedding"]
