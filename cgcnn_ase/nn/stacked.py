"""Several networks of one architecture run as one: the members of an ensemble in a single pass.

:class:`StackedNetworks` takes the :func:`~cgcnn_ase.nn.inference.inference_network` copies of the
members (batch norms folded, split product) and lays their weights side by side, so that a batch
costs one pass instead of one per member:

- the element embedding and the edge products ``u_ij W_3`` are one matrix product each with the
  members' weights concatenated (their inputs are shared);
- the per-atom products ``v_i W_1`` and ``v_j W_2`` are batched matrix products over the members,
  and the gathers, gates and sums run once over rows that hold every member's columns;
- pooling runs once, and the dense heads are batched matrix products.

The arithmetic is the members' own, in another order: results agree with running each member to
float32 rounding (about 1e-6 in normalised units). Gated (Eq. 5) convolutions only.

Shapes: atom features (N, K, A) for K members of width A; head outputs (M, K, n_out).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cgcnn_ase.graph.batch import GraphBatch
from cgcnn_ase.nn.network import ConvLayer, CrystalGraphConvNet
from cgcnn_ase.nn.ops import gated_sum_in_blocks

__all__ = ["StackedNetworks", "can_stack"]


def can_stack(networks: Sequence[CrystalGraphConvNet]) -> bool:
    """Whether ``networks`` can run as one :class:`StackedNetworks`: at least two, the same
    hyper-parameters, and only gated convolutions with folded batch norms (inference copies)."""
    if len(networks) < 2:
        return False
    first = networks[0].hparams
    return all(
        net.hparams == first and all(isinstance(c, ConvLayer) and c.bn1_folded for c in net.convs) for net in networks
    )


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as ``x * scale + shift``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class StackedNetworks(nn.Module):
    """K inference networks of one architecture as one module (see the module docstring).

    Args:
        networks: the members' inference copies (:func:`can_stack` must hold); their weights
            are copied, so later changes to them are not seen.
    """

    def __init__(self, networks: Sequence[CrystalGraphConvNet]) -> None:
        super().__init__()
        if not can_stack(networks):
            raise ValueError("stacking needs two or more inference copies of gated networks of one architecture")
        hp = networks[0].hparams
        self.n_members, self.width = len(networks), hp["atom_fea_len"]
        self.readout, self.task = hp["readout"], hp["task"]
        cat = lambda tensors, dim=0: torch.cat([t.detach() for t in tensors], dim=dim).contiguous()  # noqa: E731
        stack = lambda tensors: torch.stack([t.detach() for t in tensors]).contiguous()  # noqa: E731
        self.register_buffer("embed_w", cat([n.embedding.weight.T for n in networks], dim=1))  # (F, K·A)
        self.register_buffer("embed_b", cat([n.embedding.bias for n in networks]))
        self.n_conv = len(networks[0].convs)
        for i in range(self.n_conv):
            convs = [n.convs[i] for n in networks]
            affine = [_bn_affine(c.bn2) for c in convs]
            self.register_buffer(f"c{i}_center", stack([c.w_center for c in convs]))  # (K, A, 2A)
            self.register_buffer(f"c{i}_neighbor", stack([c.w_neighbor for c in convs]))
            a = self.width  # edge columns [filters of members 1..K | cores of members 1..K]: contiguous halves
            self.register_buffer(f"c{i}_edge", cat([c.w_edge[:, :a] for c in convs] + [c.w_edge[:, a:] for c in convs], dim=1))
            self.register_buffer(f"c{i}_bias", cat([c.fc_full.bias[:a] for c in convs] + [c.fc_full.bias[a:] for c in convs]))
            self.register_buffer(f"c{i}_scale", cat([s for s, _ in affine]))  # (K·A,)
            self.register_buffer(f"c{i}_shift", cat([t for _, t in affine]))
        layers = [[n.conv_to_fc] + list(getattr(n, "fcs", ())) + [n.fc_out] for n in networks]
        self.n_dense = len(layers[0])
        for j in range(self.n_dense):
            self.register_buffer(f"d{j}_w", stack([member[j].weight.T for member in layers]))  # (K, in, out)
            self.register_buffer(f"d{j}_b", stack([member[j].bias for member in layers]).unsqueeze(1))  # (K, 1, out)

    def _per_atom(self, per_atom: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``v W`` of every member, (K, N, A) x (K, A, 2A) -> rows (N, 2·K·A) laid out as the edge columns."""
        k, n, a = per_atom.shape
        return torch.bmm(per_atom, weight).view(k, n, 2, a).permute(1, 2, 0, 3).reshape(n, 2 * k * a)

    def _conv(self, i: int, x: torch.Tensor, batch: GraphBatch) -> torch.Tensor:
        """One gated convolution of every member: (N, K, A) -> (N, K, A)."""
        n, k, a = x.shape
        per_atom = x.transpose(0, 1)  # (K, N, A)
        center = self._per_atom(per_atom, getattr(self, f"c{i}_center"))
        neighbor = self._per_atom(per_atom, getattr(self, f"c{i}_neighbor"))
        bias, weight = getattr(self, f"c{i}_bias"), getattr(self, f"c{i}_edge")
        # one product per distinct edge length (a batch with edge_rows), gathered per edge below
        lengths = torch.addmm(bias, batch.edge_fea, weight) if batch.edge_rows is not None else None

        def preactivations(lo: int | None, hi: int | None) -> torch.Tensor:  # (edges, 2·K·A): [filters | cores]
            if lengths is not None:
                out = lengths.index_select(0, batch.edge_rows[lo:hi])
            else:
                out = torch.addmm(bias, batch.edge_fea[lo:hi], weight)
            out += center.index_select(0, batch.centers[lo:hi])
            return out.add_(neighbor.index_select(0, batch.neighbors[lo:hi]))

        summed = gated_sum_in_blocks(preactivations, batch.centers, batch.edge_weight, n, k * a)
        summed = summed * getattr(self, f"c{i}_scale") + getattr(self, f"c{i}_shift")
        return nn.functional.softplus(x.reshape(n, k * a) + summed).view(n, k, a)

    def atom_features(self, batch: GraphBatch) -> torch.Tensor:
        """Every member's atom features after the convolutions, (N, K, A)."""
        x = torch.addmm(self.embed_b, batch.atom_fea, self.embed_w).view(-1, self.n_members, self.width)
        for i in range(self.n_conv):
            x = self._conv(i, x, batch)
        return x

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Every member's dense head on its own features: (M, K, A) -> (M, K, n_out)."""
        x = nn.functional.softplus(features).transpose(0, 1)  # (K, M, A)
        for j in range(self.n_dense):
            x = torch.baddbmm(getattr(self, f"d{j}_b"), x, getattr(self, f"d{j}_w"))
            if j < self.n_dense - 1:
                x = nn.functional.softplus(x)
        out = x.transpose(0, 1)  # (M, K, n_out)
        return nn.functional.log_softmax(out, dim=2) if self.task == "classification" else out
