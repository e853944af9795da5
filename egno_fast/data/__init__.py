"""Datasets, generators and batching of graphs."""
from .batching import GraphBatch, GraphSample, collate_graphs, complete_graph_edges
from .mocap import MocapDataset, mocap_datasets
from .nbody import NBodyDataset, NBodyParams, generate_nbody, load_or_generate_nbody

__all__ = ["MocapDataset", "mocap_datasets", "GraphBatch", "GraphSample", "collate_graphs", "complete_graph_edges", "NBodyDataset", "NBodyParams",
           "generate_nbody", "load_or_generate_nbody"]
