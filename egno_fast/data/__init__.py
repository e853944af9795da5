"""Datasets, generators and batching of graphs."""
from .batching import GraphBatch, GraphSample, collate_graphs, complete_graph_edges
from .nbody import NBodyDataset, NBodyParams, generate_nbody, load_or_generate_nbody

__all__ = ["GraphBatch", "GraphSample", "collate_graphs", "complete_graph_edges", "NBodyDataset", "NBodyParams",
           "generate_nbody", "load_or_generate_nbody"]
