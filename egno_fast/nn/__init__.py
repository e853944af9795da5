"""Drop-in layers: the temporal Fourier convolutions and the EGNN layer, each dispatching to a chosen backend."""
from .egnn import EGNNLayer
from .temporal_conv import TemporalConv, VectorTemporalConv
from .time_embedding import SinusoidalTimeEmbedding

__all__ = ["EGNNLayer", "TemporalConv", "VectorTemporalConv", "SinusoidalTimeEmbedding"]
