"""Conversions between the public EGNO reference code's conventions and this package's."""
from torch import Tensor


def edge_index_from_official(edge_index: Tensor) -> Tensor:
    """[2, E] reference edge_index (row 0 = receiver) -> PyG convention (row 0 = sender, row 1 = receiver)."""
    return edge_index.flip(0)
