"""EGNO: Equivariant Graph Neural Operator (Xu et al., ICML 2024), all P output frames in one forward pass."""
from __future__ import annotations

import logging
import re
from typing import Dict, Iterable, NamedTuple, Optional, Union

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from ..backends import OPS, check_backend_name, resolve_backend
from ..config import BACKBONES, EGHN_DEFAULTS, MAX_CLUSTERS
from ..graph import Graph, GraphInputError, graph_mean, validate_node_inputs
from ..nn import EGNNLayer, SinusoidalTimeEmbedding, TemporalConv, VectorTemporalConv
from ..nn.temporal_conv import vector_temporal_block
from ..ops.egnn import CLAMPS, EGNNOptions
from ..ops.receiver_csr import build_graph
from .eghn import EGHNBackbone

logger = logging.getLogger("egno_fast")

TEMPORAL_CHANNELS = ("h", "x", "v")


class EGNOOutput(NamedTuple):
    """Predicted trajectory, time-major: x [P, N, 3], v [P, N, 3], h [P, N, H]; aux_loss: a scalar the training loss
    adds (the "eghn" backbone's weighted link loss), None for the "egnn" backbone. Metrics exclude it."""

    x: Tensor
    v: Tensor
    h: Tensor
    aux_loss: Optional[Tensor] = None


def _require_finite_outputs(inputs, *outputs: Tensor) -> None:
    """Finite inputs whose outputs are not: the coordinates (or velocities, features) are too large for the squared
    distances and messages in their dtype. GraphInputError naming the largest input and the fix (one host
    synchronisation: the validating path only)."""
    if bool(torch.stack([torch.isfinite(o).all() for o in outputs]).all()):
        return
    largest = max(float(t.abs().max()) for t in inputs)
    raise GraphInputError(f"the outputs are not finite although the inputs are: inputs up to {largest:.3g} in "
                          f"{inputs[0].dtype} overflow the model's squared distances and messages; rescale the "
                          f"positions and velocities (e.g. to nm or to the system's size) or use float64")


VECTOR_CENTRES = ("mean", "input")  # see EGNO's vector_centre

# torch.export.save and AOTInductor packages record the output type by name (the plain namedtuple support of
# torch.utils._pytree has no name to record)
if hasattr(pytree, "_register_namedtuple"):
    pytree._register_namedtuple(EGNOOutput, serialized_type_name="egno_fast.EGNOOutput")


class EGNO(nn.Module):
    """EGNO with an EGNN message-passing backbone, or EGHNO with the hierarchical EGHN backbone.

    Args:
        node_dim:      k, width of the input node features h0.
        edge_dim:      f, width of the edge features (used as given).
        hidden_dim:    H.
        num_layers:    L blocks (temporal convolutions, then one EGNN layer).
        num_frames:    P output frames.
        num_modes:     I Fourier modes kept (1 <= I <= P//2+1); 0 disables the temporal convolutions.
        time_emb_dim:  width of the sinusoidal frame embedding.
        temporal_channels: which of "h", "x", "v" pass through the temporal convolutions (Table 7 ablations).
        backend:       "auto" (the default, as on the command line: the fastest backend that can run each op on
                       the input's device), "reference", "triton" or "cpp", or a dict op -> backend for the ops
                       "temporal_residual" and "egnn_layer" (others: "auto"). What runs is reported: on the first
                       forward (and whenever it changes) :attr:`active_backend` holds the backend of each op and
                       the logger "egno_fast" records it at INFO level.
        coord_clamp:   the clamp of each layer's coordinate messages: "mean" (each component of the mean message
                       to +-100, the public code's and the default, compatible with its checkpoints; it breaks
                       rotation equivariance whenever it acts, i.e. for coordinate updates beyond 100), "norm" (the
                       mean message's norm to 100: equivariant), "edge" (each component of every edge's message to
                       +-100, as EGNN variants with a per-message range do; not equivariant where it acts) or
                       "none". Every backend runs all four.
        vector_centre: what the vector temporal convolution's position channel is centred on: "mean" (each graph's
                       mean input position, the paper's: public checkpoints reproduce) or "input" (each atom's own
                       input position). Periodic systems need "input": the lowest Fourier mode adds a multiple of
                       the centred positions, so with "mean" moving one atom by a lattice vector (another image of
                       the same system) changes every prediction; with "input" (and the graph's edge shifts) the
                       predicted displacements do not depend on the images the atoms are given in.
        backbone:      "egnn" (EGNO: ``num_layers`` blocks of temporal convolutions and one EGNN layer) or "eghn"
                       (EGHNO, :mod:`egno_fast.models.eghn`: ``num_layers`` such blocks on the atoms, soft pooling to
                       ``num_clusters`` clusters per graph by a ``pooling_layers``-layer scoring network on the bond
                       graph, ``num_layers`` blocks on the clusters, unpooling and a ``decoder_layers``-layer decoder;
                       ``num_layers`` is EGHN's layers per level). The "eghn" backbone adds ``link_weight`` times
                       the link loss as ``aux_loss``; ``assignment`` ("per_frame" or "shared") and
                       ``cluster_inputs`` ("input" or "node_level") choose between readings of the paper
                       (docs/eghno.md). Its cluster level runs the reference EGNN layer (reported as
                       "cluster_egnn_layer"). Periodic graphs are not supported by "eghn".
        validate:      check the values of the inputs (finite values, edge index range) when the forward builds the
                       graph from ``edge_index``. A prebuilt :class:`Graph` was validated where it was built: the
                       forward then checks shapes only, and neither it nor the backward synchronises with the
                       device.
    """

    def __init__(self, node_dim: int, edge_dim: int, hidden_dim: int = 64, num_layers: int = 4,
                 num_frames: int = 5, num_modes: int = 2, time_emb_dim: int = 32,
                 temporal_channels: Iterable[str] = TEMPORAL_CHANNELS,
                 backend: Union[str, Dict[str, str]] = "auto",
                 validate: bool = True, coord_clamp: str = "mean", vector_centre: str = "mean",
                 backbone: str = "egnn", num_clusters: int = EGHN_DEFAULTS["num_clusters"],
                 pooling_layers: int = EGHN_DEFAULTS["pooling_layers"],
                 decoder_layers: int = EGHN_DEFAULTS["decoder_layers"],
                 link_weight: float = EGHN_DEFAULTS["link_weight"], assignment: str = EGHN_DEFAULTS["assignment"],
                 cluster_inputs: str = EGHN_DEFAULTS["cluster_inputs"]):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {backbone!r}")
        sizes = dict(node_dim=(node_dim, 0), edge_dim=(edge_dim, 0), hidden_dim=(hidden_dim, 1),
                     num_layers=(num_layers, 1), num_frames=(num_frames, 1), time_emb_dim=(time_emb_dim, 4))
        if backbone == "eghn":
            sizes.update(num_clusters=(num_clusters, 1), pooling_layers=(pooling_layers, 1),
                         decoder_layers=(decoder_layers, 1))
        for name, (value, least) in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        channels = tuple(temporal_channels)
        unknown = set(channels) - set(TEMPORAL_CHANNELS)
        if unknown:
            raise ValueError(f"temporal_channels must be drawn from {TEMPORAL_CHANNELS}, got {sorted(unknown)}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not 0 <= num_modes <= num_frames // 2 + 1:
            raise ValueError(f"num_modes must be in [0, P//2+1] = [0, {num_frames // 2 + 1}] for P = {num_frames}, "
                             f"got {num_modes}")
        self.node_dim, self.edge_dim, self.hidden_dim = node_dim, edge_dim, hidden_dim
        self.num_layers, self.num_frames, self.num_modes = num_layers, num_frames, num_modes
        self.temporal_channels = tuple(c for c in TEMPORAL_CHANNELS if c in channels and num_modes > 0)
        self.vector_channels = tuple(c for c in ("x", "v") if c in self.temporal_channels)
        self.validate = validate
        self._backend: Union[str, Dict[str, str]] = "reference"
        self.active_backend: Optional[Dict[str, str]] = None  # op -> backend of the last forward

        self.time_embedding = SinusoidalTimeEmbedding(time_emb_dim)
        self.embedding = nn.Linear(node_dim + time_emb_dim, hidden_dim)
        # The message-passing backbone and the temporal convolutions are separate, so another backbone can reuse them.
        if coord_clamp not in CLAMPS:
            raise ValueError(f"coord_clamp must be one of {list(CLAMPS)}, got {coord_clamp!r}")
        self.coord_clamp = coord_clamp
        if vector_centre not in VECTOR_CENTRES:
            raise ValueError(f"vector_centre must be one of {list(VECTOR_CENTRES)}, got {vector_centre!r}")
        self.vector_centre = vector_centre
        options = EGNNOptions(clamp=coord_clamp)
        self.backbone = backbone
        if backbone == "eghn":
            if not (isinstance(link_weight, (int, float)) and not isinstance(link_weight, bool)
                    and 0 <= link_weight < float("inf")):
                raise ValueError(f"link_weight must be a finite number >= 0, got {link_weight!r}")
            self.link_weight = float(link_weight)
            if num_clusters > MAX_CLUSTERS:
                raise ValueError(f"num_clusters = {num_clusters} is above the limit of {MAX_CLUSTERS}: the cluster "
                                 f"level is a complete graph of K^2 edges per graph and frame and the assignment a "
                                 f"dense N x K matrix (docs/eghno.md, cost)")
            self.hierarchy = EGHNBackbone(hidden_dim, edge_dim, num_layers, num_clusters, pooling_layers,
                                          decoder_layers, num_modes, self.temporal_channels, options, assignment,
                                          cluster_inputs)
        else:
            self.message_layers = nn.ModuleList(EGNNLayer(hidden_dim, edge_dim, options=options)
                                                for _ in range(num_layers))
            self.scalar_convs, self.vector_convs = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_layers):  # interleaved, as the reference code draws them: same seed, same weights
                if "h" in self.temporal_channels:
                    self.scalar_convs.append(TemporalConv(hidden_dim, num_modes))
                if self.vector_channels:
                    self.vector_convs.append(VectorTemporalConv(len(self.vector_channels), num_modes))
        self.backend = backend

    @property
    def config(self) -> Dict[str, object]:
        """The keyword arguments that rebuild this model."""
        return dict(node_dim=self.node_dim, edge_dim=self.edge_dim, hidden_dim=self.hidden_dim,
                    num_layers=self.num_layers, num_frames=self.num_frames, num_modes=self.num_modes,
                    time_emb_dim=self.time_embedding.dim, temporal_channels=list(self.temporal_channels),
                    coord_clamp=self.coord_clamp, vector_centre=self.vector_centre, backend=self._backend,
                    **self._backbone_config())

    def _backbone_config(self) -> Dict[str, object]:
        if self.backbone == "egnn":  # the keys of models saved before the backbone choice
            return {}
        hierarchy = self.hierarchy
        return dict(backbone="eghn", num_clusters=hierarchy.num_clusters, pooling_layers=len(hierarchy.scorer.node_mlps),
                    decoder_layers=len(hierarchy.decoder.layers), link_weight=self.link_weight,
                    assignment=hierarchy.assignment, cluster_inputs=hierarchy.cluster_inputs)

    @property
    def backend(self) -> Union[str, Dict[str, str]]:
        """The requested backend; :attr:`active_backend` is what the last forward ran, per op."""
        return self._backend

    @backend.setter
    def backend(self, requested: Union[str, Dict[str, str]]) -> None:
        if isinstance(requested, dict):
            unknown = set(requested) - set(OPS)
            if unknown:
                raise ValueError(f"backend dict keys must be ops {OPS}, got {sorted(unknown)}")
            per_op = {op: check_backend_name(requested.get(op, "auto")) for op in OPS}
        else:
            per_op = dict.fromkeys(OPS, check_backend_name(requested))
        self._backend = dict(requested) if isinstance(requested, dict) else requested
        self._per_op_backend = per_op
        for module in self.modules():
            if isinstance(module, EGNNLayer):
                module.backend = per_op["egnn_layer"]
            elif isinstance(module, (TemporalConv, VectorTemporalConv)):
                module.backend = per_op["temporal_residual"]
        if self.backbone == "eghn":  # per-frame edge features: the reference layer only (class docstring)
            for layer in self.hierarchy.cluster_layers:
                layer.backend = "reference"

    def forward(self, x: Tensor, v: Tensor, h: Tensor, edge_index: Union[Tensor, Graph],
                edge_attr: Optional[Tensor] = None, batch: Optional[Tensor] = None,
                frame_times: Optional[Tensor] = None, edge_shift: Optional[Tensor] = None,
                bonds: Optional[Tensor] = None) -> EGNOOutput:
        """Predict the positions, velocities and features at the P output times.

        Args:
            x, v:        [N, 3] input positions and velocities.
            h:           [N, k] invariant node features.
            edge_index:  [2, E] (row 0 = sender j, row 1 = receiver i), or a prebuilt :class:`Graph`.
            edge_attr:   [E, f] edge features (None when f = 0 or when a Graph is given).
            batch:       [N] sorted graph id of each node (None: one graph).
            frame_times: [P'] embedding indices of the output times (default 0..P-1); fractional values query
                         times between the training frames (zero-shot resampling).
            edge_shift:  [E, 3] periodic shift of each edge, added to x_i - x_j (minimum images:
                         :func:`~egno_fast.ops.periodic_radius_graph`), or None; a prebuilt Graph carries its own.
            bonds:       [2, b] integer bond graph of the "eghn" backbone's scoring network (row 0 = sender; bonds
                         within the graphs), or None: the message-passing graph. The "egnn" backbone ignores it.
        Returns:
            EGNOOutput(x [P, N, 3], v [P, N, 3], h [P, N, H], aux_loss: [] or None).
        """
        num_nodes = x.shape[0] if x.dim() > 0 else 0
        validating = self.validate and not isinstance(edge_index, Graph)
        if frame_times is not None:  # zero-shot queries (not the training path): checked whenever given
            numeric = isinstance(frame_times, Tensor) and (frame_times.is_floating_point() or frame_times.dtype in (
                torch.int32, torch.int64))
            if not numeric or frame_times.dim() != 1:
                raise GraphInputError(f"frame_times must be a 1-D tensor of times, got "
                                      f"{list(frame_times.shape) if isinstance(frame_times, Tensor) else frame_times}")
            if not bool(torch.isfinite(frame_times).all()):
                raise GraphInputError("frame_times contains NaN or infinite values")
        if isinstance(edge_index, Graph):
            if edge_attr is not None or batch is not None or edge_shift is not None:
                raise GraphInputError("pass edge_attr, batch and edge_shift to build_graph, not with a prebuilt Graph")
            graph = edge_index
            if graph.num_nodes != num_nodes:
                raise GraphInputError(f"the graph has {graph.num_nodes} nodes but x has {num_nodes} rows")
            self._check_shapes(x, v, h, graph)
        else:
            graph = build_graph(edge_index, num_nodes, edge_attr, batch, validate=self.validate, edge_shift=edge_shift)
            self._check_shapes(x, v, h, graph)
            if self.validate:
                validate_node_inputs(graph.num_nodes, x=x, v=v, h=h)
        self._report_backend(x.device)
        self._warn_if_image_dependent(graph)
        if self.backbone == "eghn":
            self._check_hierarchy_inputs(graph, bonds, x.device, check_values=validating)
        inputs = (x, v, h)

        times = (torch.arange(self.num_frames, device=x.device, dtype=x.dtype) if frame_times is None
                 else frame_times.to(device=x.device, dtype=x.dtype))
        num_frames = times.shape[0]
        embedding = self.time_embedding(times)  # [P, T]
        h = self.embedding(torch.cat([h[:, None, :].expand(-1, num_frames, -1),
                                      embedding[None].expand(num_nodes, -1, -1)], dim=-1)).to(x.dtype)  # [N, P, H]
        # [N, 1, 3]: each graph's mean input position, or each atom's own (vector_centre)
        centre = (graph_mean(x, graph) if self.vector_centre == "mean" else x)[:, None, :]
        if self.backbone == "eghn":
            out = self.hierarchy(x, v, h, graph, centre, bonds)
            if validating:
                _require_finite_outputs(inputs, out.x, out.v, out.h)
            return EGNOOutput(out.x.transpose(0, 1), out.v.transpose(0, 1), out.h.transpose(0, 1),
                              self.link_weight * out.link_loss)
        x = x[:, None, :].expand(-1, num_frames, -1)
        v = v[:, None, :].expand(-1, num_frames, -1)
        for index, layer in enumerate(self.message_layers):
            if self.scalar_convs:
                h = self.scalar_convs[index](h)
            if self.vector_convs:
                x, v = vector_temporal_block(self.vector_convs[index], self.vector_channels, x, v, centre)
            x, v, h = layer(x, v, h, graph)
        if validating:
            _require_finite_outputs(inputs, x, v, h)
        return EGNOOutput(x.transpose(0, 1), v.transpose(0, 1), h.transpose(0, 1))

    def _check_hierarchy_inputs(self, graph: Graph, bonds: Optional[Tensor], device: torch.device,
                                check_values: bool) -> None:
        """What the "eghn" backbone needs beyond EGNO's inputs: no periodic shifts, and a bond graph [2, b] of int64
        or int32 on the inputs' device, inside the graphs (values checked with ``check_values``: where the forward
        validates a graph it builds; a batch's bonds from :func:`~egno_fast.data.collate_graphs` are trusted)."""
        if graph.edge_shift is not None:
            raise GraphInputError("the 'eghn' backbone does not support periodic graphs (edge shifts): its clusters "
                                  "pool absolute positions; use backbone='egnn'")
        if bonds is None:
            return
        if not isinstance(bonds, Tensor) or bonds.dim() != 2 or bonds.shape[0] != 2 \
                or bonds.dtype not in (torch.int64, torch.int32):
            raise GraphInputError("bonds must be an int64 or int32 tensor of shape [2, b], got "
                                  + (f"{bonds.dtype} {list(bonds.shape)}" if isinstance(bonds, Tensor)
                                     else type(bonds).__name__))
        if bonds.device != device:
            raise GraphInputError(f"bonds are on {bonds.device}, the inputs on {device}")
        if check_values and bonds.numel():
            low, high = (int(value) for value in torch.aminmax(bonds))
            if low < 0 or high >= graph.num_nodes:
                raise GraphInputError(f"bonds hold node indices in [{low}, {high}], outside [0, {graph.num_nodes})")
            crossing = graph.batch[bonds[0]] != graph.batch[bonds[1]]
            if bool(crossing.any()):
                first = int(crossing.nonzero()[0, 0])
                raise GraphInputError(f"bond {first} ({int(bonds[0, first])} -> {int(bonds[1, first])}) joins two "
                                      f"different graphs of the batch")

    def _warn_if_image_dependent(self, graph: Graph) -> None:
        """Say once per model when a periodic graph meets the paper's centring, whose predictions depend on the
        lattice images the atoms are given in (see ``vector_centre``)."""
        if graph.edge_shift is None or self.vector_centre != "mean" or "x" not in self.vector_channels \
                or getattr(self, "_warned_image_dependence", False) or torch.compiler.is_compiling():
            return
        self._warned_image_dependence = True
        logger.warning(
            "EGNO(vector_centre='mean') on a periodic graph (edge shifts): its predictions depend on which lattice "
            "image each atom is given in; build the model with vector_centre='input' for periodic systems")

    def _check_shapes(self, x: Tensor, v: Tensor, h: Tensor, graph: Graph) -> None:
        """Shapes, dtypes and the graph's feature width (metadata only: no device synchronisation)."""
        for name, value, width in (("x", x, 3), ("v", v, 3), ("h", h, self.node_dim)):
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise GraphInputError(f"{name} must be a floating-point tensor, got "
                                      f"{value.dtype if isinstance(value, Tensor) else type(value).__name__}")
            if value.dim() != 2 or value.shape[1] != width or value.shape[0] != graph.num_nodes:
                raise GraphInputError(f"{name} must have shape [N, {width}] with N = {graph.num_nodes}, got "
                                      f"{list(value.shape)}")
        if graph.edge_attr.shape[1] != self.edge_dim:
            raise GraphInputError(f"edge_attr must have {self.edge_dim} features, got {graph.edge_attr.shape[1]}")

    def _report_backend(self, device: torch.device) -> None:
        chosen = {op: resolve_backend(name, device, op) for op, name in self._per_op_backend.items()}
        if self.backbone == "eghn":
            chosen["cluster_egnn_layer"] = "reference"
        if chosen != self.active_backend:
            if not torch.compiler.is_compiling():  # torch.compile traces no logging call (the eager run reports)
                logger.info("EGNO backend: requested %r, running %s on %s", self._backend,
                            ", ".join(f"{op}={name!r}" for op, name in chosen.items()), device)
            self.active_backend = chosen

    # ---------------------------------------------------------------- saved models
    @classmethod
    def load(cls, path, backend: Union[str, Dict[str, str]] = "auto", map_location="cpu") -> "EGNO":
        """The model of a model file (``RUN/model.pt``, format in :mod:`egno_fast.training.checkpoint`, read with
        ``weights_only=True``) or of a training checkpoint (``best.pt``), in eval mode, with ``backend``."""
        from ..training.checkpoint import load_model_file

        return cls.from_model_record(load_model_file(path, map_location), backend)

    @classmethod
    def from_model_record(cls, record: Dict[str, object], backend: Union[str, Dict[str, str]] = "auto") -> "EGNO":
        """The model of a record returned by :func:`egno_fast.training.checkpoint.load_model_file`, in eval mode."""
        model = cls(**record["model_config"], backend=backend)
        model.load_state_dict(record["model"])
        return model.eval()

    # ---------------------------------------------------------------- compatibility with the reference code
    @classmethod
    def from_official_state_dict(cls, state_dict: Dict[str, Tensor], **config) -> "EGNO":
        """Build a model from a state_dict saved by the public EGNO code (GitHub MinkaiXu/EGNO).

        ``config`` takes this class's keyword arguments (node_dim, edge_dim, hidden_dim, ...). Inputs then follow
        this package's conventions: edge_index row 0 is the sender (the reference stores the receiver first:
        :func:`egno_fast.compat.edge_index_from_official` converts it).
        """
        model = cls(**config)
        model.load_state_dict(official_to_native(state_dict))
        return model


_OFFICIAL_RENAMES = (
    (r"^layers\.(\d+)\.edge_message_net\.scalar_net\.mlp\.", r"message_layers.\1.edge_mlp."),
    (r"^layers\.(\d+)\.coord_net\.mlp\.", r"message_layers.\1.coord_mlp."),
    (r"^layers\.(\d+)\.node_v_net\.mlp\.", r"message_layers.\1.velocity_mlp."),
    (r"^layers\.(\d+)\.node_net\.mlp\.", r"message_layers.\1.node_mlp."),
    (r"^time_conv_modules\.(\d+)\.t_conv\.weights1$", r"scalar_convs.\1.weight"),
    (r"^time_conv_x_modules\.(\d+)\.t_conv\.weights1$", r"vector_convs.\1.weight"),
    (r"^embedding\.", r"embedding."),
)


def official_to_native(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Rename the parameters of a reference-code EGNO state_dict to this package's names."""
    native = {}
    for name, value in state_dict.items():
        for pattern, replacement in _OFFICIAL_RENAMES:
            if re.match(pattern, name):
                native[re.sub(pattern, replacement, name)] = value
                break
        else:
            raise KeyError(f"unexpected parameter {name!r} in the official EGNO state_dict")
    return native
