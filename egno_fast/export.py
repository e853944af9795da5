"""torch.export of an EGNO model for inference, on a prebuilt graph, with the batch's sizes left symbolic.

The graph enters the exported program as a :class:`~egno_fast.graph.Graph` (a registered pytree node: its nine
tensors are the program's graph inputs), so the program is called as the model is::

    program = export_for_inference(model, x, v, h, graph)
    out = program.module()(x2, v2, h2, graph2)   # another batch: other numbers of nodes, edges and graphs

The fused ops are registered PyTorch operators (``torch.ops.egno_fast.*``), so they appear in the program as single
calls; running it, or an AOTInductor package made from it, needs those operators loaded (``import egno_fast.cpp``
for the "cpp" backend). :func:`load_exported_program` reads a saved program with everything it names registered.
"""
from __future__ import annotations

import importlib

import torch
from torch import Tensor

from .graph import Graph, GraphInputError
from .models import EGNO  # also registers EGNOOutput's name for saved programs


def export_for_inference(model: EGNO, x: Tensor, v: Tensor, h: Tensor, graph: Graph,
                         dynamic: bool = True) -> "torch.export.ExportedProgram":
    """Export ``model`` (in eval mode, without gradients) on the example batch ``(x, v, h, graph)``.

    Args:
        model:   an :class:`EGNO` with the backend the program should call ("cpp" on CPU: its registered operators);
                 the "egnn" backbone (EGHNO's forward reads graph sizes on the host: it is refused).
        x, v:    [N, 3] example positions and velocities; h: [N, k] example node features.
        graph:   the example batch's :class:`Graph` (from :func:`egno_fast.build_graph`).
        dynamic: leave the numbers of nodes, edges and graphs symbolic (each must be at least 2 in the example:
                 torch.export specialises a size of 0 or 1 to that value); False fixes every shape.
    Returns:
        The ``torch.export.ExportedProgram``; ``.module()(x, v, h, graph)`` returns an :class:`EGNOOutput`.
    Raises:
        GraphInputError: ``dynamic`` with an example batch of fewer than 2 nodes, edges or graphs.
        RuntimeError: this torch has no ``torch.export.Dim.AUTO`` (torch < 2.6) and ``dynamic`` was asked for.
        ValueError: a model of another backbone than "egnn".
    """
    if getattr(model, "backbone", "egnn") != "egnn":
        raise ValueError(f"export_for_inference supports the 'egnn' backbone, not {model.backbone!r} (its forward "
                         f"reads graph sizes on the host)")
    shapes = None
    if dynamic:
        counts = {"nodes": graph.num_nodes, "edges": graph.num_edges, "graphs": graph.num_graphs}
        small = [f"{count} {name}" for name, count in counts.items() if count < 2]
        if small:
            raise GraphInputError(f"export_for_inference(dynamic=True) needs an example batch with at least 2 nodes, "
                                  f"edges and graphs (torch.export fixes sizes 0 and 1), got {', '.join(small)}")
        if not hasattr(torch.export, "ShapesCollection") or not hasattr(torch.export.Dim, "AUTO"):
            raise RuntimeError(f"dynamic export needs torch >= 2.6 (torch.export.Dim.AUTO); this is torch "
                               f"{torch.__version__}; pass dynamic=False for fixed shapes")
        shapes = torch.export.ShapesCollection()
        for tensor in (x, v, h, *torch.utils._pytree.tree_leaves(graph)):
            shapes[tensor] = {0: torch.export.Dim.AUTO}  # the node, edge or graph axis; the rest stay fixed
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(model, (x, v, h, graph), dynamic_shapes=shapes)
    finally:
        model.train(was_training)


def load_exported_program(path) -> "torch.export.ExportedProgram":
    """``torch.export.load`` of a program saved from :func:`export_for_inference`, in any process: the Graph and
    EGNOOutput types it names are registered by importing this module, and the operators it may call by importing
    the backends that provide them first (:mod:`egno_fast.cpp`, built on first use on a machine, and the Triton
    kernels where Triton is installed).

    Raises:
        RuntimeError: the program cannot be read, with the reasons the backends are unavailable if some are.
    """
    unavailable = []
    for module in ("egno_fast.cpp", "egno_fast.kernels.egnn_edge", "egno_fast.kernels.temporal_conv"):
        try:
            importlib.import_module(module)  # registers its torch.ops.egno_fast operators
        except ImportError as error:
            unavailable.append(f"{module}: {error}")
    try:
        return torch.export.load(path)
    except Exception as error:
        if not unavailable:
            raise
        raise RuntimeError(f"cannot load {path}: {error}; operators it may call are unavailable: "
                           f"{'; '.join(unavailable)}") from error
