"""PNG plots of predicted vs true trajectories."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..data.batching import collate_graphs
from ..data.io import atomic_path
from .precision import precision_context


@torch.no_grad()
def plot_trajectories(model: torch.nn.Module, dataset: Dataset, path: str | Path, num_samples: int = 3,
                      device: torch.device | str = "cpu", precision: str = "fp32") -> Path:
    """Plot the first ``num_samples`` graphs of ``dataset``: true (solid) and predicted (dashed) paths of every
    node from the input frame through the P output frames, projected on the first two coordinates (the model run
    at ``precision``, as trained)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_samples = max(1, min(num_samples, len(dataset)))
    model.eval()
    batch = collate_graphs([dataset[i] for i in range(num_samples)]).to(device)
    with precision_context(precision, device):
        pred = model(batch.x, batch.v, batch.h, batch.graph(), **batch.model_keywords).x.float()  # [P, N, 3]
    true_paths = torch.cat([batch.x[None], batch.target]).cpu()  # [P + 1, N, 3]
    pred_paths = torch.cat([batch.x[None], pred]).cpu()
    fig, axes = plt.subplots(1, num_samples, figsize=(4.5 * num_samples, 4.5), squeeze=False)
    colours = plt.get_cmap("tab10")
    for sample, axis in enumerate(axes[0]):
        nodes = (batch.batch == sample).nonzero().flatten().cpu()
        for k, node in enumerate(nodes.tolist()):
            colour = colours(k % 10)
            axis.plot(true_paths[:, node, 0], true_paths[:, node, 1], "-o", color=colour, ms=3)
            axis.plot(pred_paths[:, node, 0], pred_paths[:, node, 1], "--x", color=colour, ms=4)
        axis.plot([], [], "-o", color="0.3", ms=3, label="true (one colour per node)")
        axis.plot([], [], "--x", color="0.3", ms=4, label="predicted")
        axis.set_title(f"test sample {sample}")
        axis.set_xlabel("x")
        axis.set_ylabel("y")
        axis.set_aspect("equal", adjustable="datalim")
        axis.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
