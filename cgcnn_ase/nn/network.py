"""The crystal graph convolutional neural network (Xie & Grossman, PRL 120, 145301, 2018).

Pure torch: this module never sees ASE or pymatgen, only :class:`~cgcnn_ase.graph.batch.GraphBatch`.
Parameter names match the original implementation's state dicts (``embedding``,
``convs.{k}.fc_full``, ``convs.{k}.bn1``, ``convs.{k}.bn2``, ``conv_to_fc``, ``fcs.{k}``,
``fc_out``), so the authors' weights load unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from cgcnn_ase.graph.batch import GraphBatch
from cgcnn_ase.nn.fused import gated_messages
from cgcnn_ase.nn.ops import (
    gated_sum_in_blocks,
    gather_rows,
    index_add_rows,
    index_select_rows,
    scatter_rows,
    segment_mean,
    weighted_batch_norm,
)

Task = Literal["regression", "classification"]
Readout = Literal["mean", "atomwise"]
ConvKind = Literal["gated", "simple"]


class ConvLayer(nn.Module):
    r"""Gated graph convolution, Eq. 5 of the paper, with the original's batch norms.

    .. math::
        z_{ij} = v_i \oplus v_j \oplus u_{ij}, \qquad
        v_i \leftarrow g\Big(v_i + \mathrm{BN}_2\Big(\sum_j \sigma(\hat z^f_{ij}) \odot g(\hat z^s_{ij})\Big)\Big),
        \qquad \hat z_{ij} = \mathrm{BN}_1(z_{ij} W + b) = \hat z^f_{ij} \oplus \hat z^s_{ij}

    with ``g`` = softplus and σ the logistic sigmoid.

    Args:
        atom_fea_len: atom feature width A.
        nbr_fea_len: edge feature width B (number of Gaussians).
        split_matmul: compute ``z W`` as ``v_i W_1 + v_j W_2 + u_ij W_3`` (two per-atom
            products and one per-edge product over the narrow edge part) instead of one
            product over the concatenated (E, 2A + B) matrix. Same maths, different float32
            rounding (up to ~1e-5 on the authors' models), so it is off by default; see
            docs/performance.md for its speed.
        opaque_indexing: do the gathers of atom rows onto edges and the sums of edge rows
            onto atoms with :func:`gather_rows` / :func:`scatter_rows`, operators that
            ``torch.compile`` calls as they are. Compiled for a multi-threaded CPU, the
            sums otherwise become atomic adds, which two threads slow down; eager results
            are the same either way.
        fused: in training mode on a CPU (and without ``opaque_indexing``), compute ``BN_1``,
            the gates and the sum through :func:`~cgcnn_ase.nn.fused.gated_messages`, one
            autograd Function with a hand-written backward: the same maths and running
            statistics, float rounding apart, in less time (docs/performance.md). Eval mode,
            GPUs (not measured there) and ``fused=False`` use the plain form.

    Shapes:
        atom_fea (N, A), edge_fea (E, B), centers/neighbors (E,), optional edge_weight
        (E,) -> (N, A). An edge of weight ``m`` counts as ``m`` identical edges, in the
        sum and in ``BN_1``'s batch statistics (see :class:`~cgcnn_ase.graph.batch.GraphBatch`).
    """

    def __init__(
        self,
        atom_fea_len: int,
        nbr_fea_len: int,
        *,
        split_matmul: bool = False,
        opaque_indexing: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.nbr_fea_len = nbr_fea_len
        self.split_matmul = split_matmul
        self.opaque_indexing = opaque_indexing
        self.fused = fused
        self.bn1_folded = False  # set by fold_batch_norm: BN_1 lives in fc_full
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def _edge_products(
        self,
        atom_fea: torch.Tensor,
        edge_fea: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        edge_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``z_ij W + b`` for every edge, shape (E, 2A).

        With ``edge_rows`` (E,) (split form), ``edge_fea`` (U, B) holds one row per distinct edge
        length: ``u W_3 + b`` is computed once per row (U, 2A), then gathered onto the edges. (The
        folded inference form computes its products in :meth:`_evaluate_in_blocks`.)"""
        gather = gather_rows if self.opaque_indexing else index_select_rows
        if not self.split_matmul:
            z = torch.cat([gather(atom_fea, centers), gather(atom_fea, neighbors), edge_fea], dim=1)
            return self.fc_full(z)
        a = self.atom_fea_len
        w = self.fc_full.weight
        gated = torch.addmm(self.fc_full.bias, edge_fea, w[:, 2 * a :].T)
        if edge_rows is not None:  # (U, 2A) -> (E, 2A); its backward sums the edges' gradients onto the U rows
            gated = gather(gated, edge_rows)
        if self.opaque_indexing:  # out of place: what the compiled multi-threaded path was measured with
            per_atom = atom_fea @ torch.cat([w[:, :a], w[:, a : 2 * a]], dim=0).T  # (N, 4A): [v W_1 | v W_2]
            return gated + gather(per_atom[:, : 2 * a], centers) + gather(per_atom[:, 2 * a :], neighbors)
        # contiguous (N, 2A) products gathered and summed in place: the same sums in the same order, and
        # their backward scatters straight into (N, 2A) rows (no slice of a wider zero matrix); measured
        # 1.7x less time for this part (forward + backward) on one CPU thread
        gated = gated.add_(gather(atom_fea @ w[:, :a].T, centers))
        return gated.add_(gather(atom_fea @ w[:, a : 2 * a].T, neighbors))

    @torch.no_grad()
    def fold_batch_norm(self) -> None:
        """Fold ``BN_1``'s running statistics into ``fc_full`` (in place; for inference only).

        In eval mode ``BN_1(z W + b) = z (W s) + (b - μ) s + β`` with ``s = γ / sqrt(σ² + ε)``, so
        one product replaces the product and a pass over the (E, 2A) edge rows. Same maths,
        float32 rounding of order 1e-7 relative. The products are then computed in the split form
        from contiguous copies of ``W_1``, ``W_2``, ``W_3`` (buffers ``w_center``, ``w_neighbor``,
        ``w_edge``, each (in, 2A)). The layer no longer trains like the original.
        """
        if self.bn1_folded:
            return
        bn = self.bn1
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.fc_full.weight.mul_(scale.unsqueeze(1))
        self.fc_full.bias.copy_((self.fc_full.bias - bn.running_mean) * scale + bn.bias)
        a, w = self.atom_fea_len, self.fc_full.weight
        for name, block in (("w_center", w[:, :a]), ("w_neighbor", w[:, a : 2 * a]), ("w_edge", w[:, 2 * a :])):
            self.register_buffer(name, block.T.contiguous(), persistent=False)
        self.bn1_folded = True

    def forward(
        self,
        atom_fea: torch.Tensor,
        edge_fea: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        edge_weight: torch.Tensor | None = None,
        edge_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``edge_rows`` (folded or split form only): the row of ``edge_fea`` of each edge."""
        if edge_rows is not None and not (self.bn1_folded or self.split_matmul):
            raise ValueError("edge_rows needs the folded inference form (fold_batch_norm) or split_matmul")
        if self.bn1_folded or (not self.training and atom_fea.device.type == "cpu" and not self.split_matmul):
            return self._evaluate_in_blocks(atom_fea, edge_fea, centers, neighbors, edge_weight, edge_rows)
        products = self._edge_products(atom_fea, edge_fea, centers, neighbors, edge_rows)
        if self.fused and self.bn1.training and products.device.type == "cpu" and not self.opaque_indexing:
            summed = gated_messages(products, self.bn1, centers, atom_fea.shape[0], edge_weight)
            return nn.functional.softplus(atom_fea + self.bn2(summed))
        if edge_weight is None:
            gated = self.bn1(products)
        else:
            gated = weighted_batch_norm(self.bn1, products, edge_weight)
        nbr_filter, nbr_core = gated.chunk(2, dim=1)
        messages = torch.sigmoid(nbr_filter) * nn.functional.softplus(nbr_core)
        if edge_weight is not None:
            messages = messages * edge_weight.to(messages.dtype).unsqueeze(1)
        scatter = scatter_rows if self.opaque_indexing else index_add_rows
        summed = scatter(messages, centers, atom_fea.shape[0])
        return nn.functional.softplus(atom_fea + self.bn2(summed))

    def _evaluate_in_blocks(
        self,
        atom_fea: torch.Tensor,
        edge_fea: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        edge_weight: torch.Tensor | None,
        edge_rows: torch.Tensor | None,
    ) -> torch.Tensor:
        """The folded inference form (``v_i W_1 + v_j W_2 + u_ij W_3 + b`` from contiguous weight copies, the
        per-atom parts gathered and summed in place), and eval mode on a CPU in the plain (unsplit) form:
        :meth:`forward`'s maths, on a CPU over blocks of edges whose intermediates stay in a core's cache
        (:func:`~cgcnn_ase.nn.ops.gated_sum_in_blocks`; one pass elsewhere)."""
        a = self.atom_fea_len
        if self.bn1_folded:
            center, neighbor = atom_fea @ self.w_center, atom_fea @ self.w_neighbor  # (N, 2A) each
            # one product per distinct edge length (a batch with edge_rows), gathered per edge below
            lengths = torch.addmm(self.fc_full.bias, edge_fea, self.w_edge) if edge_rows is not None else None

            def preactivations(lo: int | None, hi: int | None) -> torch.Tensor:
                if lengths is not None:
                    out = lengths.index_select(0, edge_rows[lo:hi])
                else:
                    out = torch.addmm(self.fc_full.bias, edge_fea[lo:hi], self.w_edge)
                out += center.index_select(0, centers[lo:hi])
                return out.add_(neighbor.index_select(0, neighbors[lo:hi]))

        else:  # the reference arithmetic: BN_1 with running statistics acts on each row alone

            def preactivations(lo: int | None, hi: int | None) -> torch.Tensor:
                rows = edge_fea[lo:hi] if edge_rows is None else edge_fea.index_select(0, edge_rows[lo:hi])
                return self.bn1(self._edge_products(atom_fea, rows, centers[lo:hi], neighbors[lo:hi]))

        summed = gated_sum_in_blocks(preactivations, centers, edge_weight, atom_fea.shape[0], a)
        return nn.functional.softplus(atom_fea + self.bn2(summed))


class SimpleConvLayer(nn.Module):
    r"""The simpler convolution of Eq. 4 of the paper.

    .. math::
        v_i \leftarrow g\Big(\sum_j (v_j \oplus u_{ij}) W_c + v_i W_s + b\Big)

    Args:
        atom_fea_len: atom feature width A.
        nbr_fea_len: edge feature width B.

    Shapes:
        atom_fea (N, A), edge_fea (E, B), centers/neighbors (E,) -> (N, A).
    """

    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.fc_nbr = nn.Linear(atom_fea_len + nbr_fea_len, atom_fea_len, bias=False)
        self.fc_self = nn.Linear(atom_fea_len, atom_fea_len)

    def forward(
        self,
        atom_fea: torch.Tensor,
        edge_fea: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        a = self.atom_fea_len
        w = self.fc_nbr.weight
        messages = (atom_fea @ w[:, :a].T).index_select(0, neighbors) + edge_fea @ w[:, a:].T
        if edge_weight is not None:
            messages = messages * edge_weight.to(messages.dtype).unsqueeze(1)
        summed = atom_fea.new_zeros(atom_fea.shape).index_add_(0, centers, messages)
        return nn.functional.softplus(summed + self.fc_self(atom_fea))


class CrystalGraphConvNet(nn.Module):
    """CGCNN: embedding, ``n_conv`` convolutions, pooling and a dense head.

    Args:
        orig_atom_fea_len: element feature width (92 for the paper's table).
        nbr_fea_len: edge feature width (41 Gaussians with the default graph settings).
        atom_fea_len: hidden atom feature width A (paper's pretrained models: 64).
        n_conv: number of convolution layers (pretrained: 4).
        h_fea_len: width of the hidden dense layers (pretrained: 32).
        n_h: number of hidden dense layers.
        task: ``"regression"`` (one output, in normalised units) or ``"classification"``
            (two log-probabilities; class 1 is the positive class).
        readout: ``"mean"`` pools atom features then applies the head (the paper's main
            models); ``"atomwise"`` applies the head to each atom and averages the
            per-atom scalars (the paper's interpretable variant; regression only).
        conv: ``"gated"`` (Eq. 5, the paper's choice) or ``"simple"`` (Eq. 4).
        dropout: dropout probability before the hidden layers (classification only, as
            in the original).
    """

    def __init__(
        self,
        *,
        orig_atom_fea_len: int = 92,
        nbr_fea_len: int = 41,
        atom_fea_len: int = 64,
        n_conv: int = 3,
        h_fea_len: int = 128,
        n_h: int = 1,
        task: Task = "regression",
        readout: Readout = "mean",
        conv: ConvKind = "gated",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
        if readout not in ("mean", "atomwise"):
            raise ValueError(f"readout must be 'mean' or 'atomwise', got {readout!r}")
        if readout == "atomwise" and task != "regression":
            raise ValueError("the atomwise readout is defined for regression only")
        if conv not in ("gated", "simple"):
            raise ValueError(f"conv must be 'gated' or 'simple', got {conv!r}")
        self.hparams = dict(
            orig_atom_fea_len=orig_atom_fea_len, nbr_fea_len=nbr_fea_len, atom_fea_len=atom_fea_len,
            n_conv=n_conv, h_fea_len=h_fea_len, n_h=n_h, task=task, readout=readout, conv=conv, dropout=dropout,
        )  # fmt: skip
        self.task = task
        self.readout = readout
        layer = ConvLayer if conv == "gated" else SimpleConvLayer
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList([layer(atom_fea_len, nbr_fea_len) for _ in range(n_conv)])
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        if n_h > 1:
            self.fcs = nn.ModuleList([nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1)])
        self.fc_out = nn.Linear(h_fea_len, 2 if task == "classification" else 1)
        self.dropout = nn.Dropout(dropout) if task == "classification" else nn.Identity()

    def set_execution(
        self, *, split_matmul: bool | None = None, opaque_indexing: bool | None = None, fused: bool | None = None
    ) -> None:
        """Choose how the gated convolutions compute, leaving the maths (and the weights) unchanged.

        Args:
            split_matmul: compute ``z W`` in the split form (see :class:`ConvLayer`); ``None``
                leaves the current setting.
            opaque_indexing: gather/scatter through the opaque operators of
                :mod:`cgcnn_ase.nn.ops` (faster under ``torch.compile`` on a multi-threaded
                CPU); ``None`` leaves the current setting.
            fused: batch norm, gates and sums of training steps on a CPU through one autograd
                Function (see :class:`ConvLayer`; on by default); ``None`` leaves the current setting.

        Simple (Eq. 4) convolutions have neither option and are left as they are.
        """
        for conv in self.convs:
            if not isinstance(conv, ConvLayer):
                continue
            if split_matmul is not None:
                conv.split_matmul = split_matmul
            if opaque_indexing is not None:
                conv.opaque_indexing = opaque_indexing
            if fused is not None:
                conv.fused = fused

    def atom_features(self, batch: GraphBatch) -> torch.Tensor:
        """Atom feature vectors after the convolutions, shape (N_total, atom_fea_len).

        A batch with ``edge_rows`` (one edge-feature row per distinct length) goes to gated
        convolutions in the folded or split form as it is, which then multiply each distinct row
        once; other layers get one row per edge."""
        atom_fea = self.embedding(batch.atom_fea)
        rows = batch.edge_rows
        edge_fea = batch.edge_fea
        if rows is not None and not all(
            isinstance(c, ConvLayer) and (c.bn1_folded or c.split_matmul) for c in self.convs
        ):
            edge_fea, rows = batch.edge_features(), None
        for conv in self.convs:
            if rows is None:
                atom_fea = conv(atom_fea, edge_fea, batch.centers, batch.neighbors, batch.edge_weight)
            else:
                atom_fea = conv(atom_fea, edge_fea, batch.centers, batch.neighbors, batch.edge_weight, rows)
        return atom_fea

    def crystal_features(self, batch: GraphBatch) -> torch.Tensor:
        """Mean-pooled crystal feature vectors, shape (n_crystals, atom_fea_len)."""
        return segment_mean(self.atom_features(batch), batch.crystal_index, batch.n_crystals)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Dense layers on pooled (or, atomwise, per-atom) features: (M, A) -> (M, n_out)."""
        x = nn.functional.softplus(self.conv_to_fc(nn.functional.softplus(features)))
        x = self.dropout(x)
        for fc in getattr(self, "fcs", ()):
            x = nn.functional.softplus(fc(x))
        out = self.fc_out(x)
        return nn.functional.log_softmax(out, dim=1) if self.task == "classification" else out

    def atom_contributions(self, batch: GraphBatch) -> torch.Tensor:
        """Per-atom scalars of the atomwise readout (normalised units), shape (N_total,).

        Their mean over each crystal's atoms is :meth:`forward`'s output.
        """
        if self.readout != "atomwise":
            raise ValueError("atom_contributions needs a model with readout='atomwise'")
        return self.head(self.atom_features(batch)).squeeze(1)

    def linear_attributions(self, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions and per-atom contributions of a mean-pooled model, exact in the mean.

        With ``f`` the head (regression: normalised value; classification: probability of
        class 1), pooled vector ``v̄`` and atom features ``v_i``, atom ``i`` contributes the
        first-order expansion ``c_i = f(v̄) + ∇f(v̄) · (v_i − v̄)``. Because the ``v_i − v̄``
        average to zero over a crystal, the mean of ``c_i`` is exactly the prediction
        ``f(v̄)``; atoms whose environment pushes the pooled features in the direction that
        raises ``f`` get larger values. It is a linearisation, not a unique decomposition.

        Returns:
            ``f(v̄)`` per crystal, shape (n_crystals,), and ``c_i``, shape (N_total,).
        """
        atom_fea = self.atom_features(batch).detach()
        with torch.enable_grad():
            pooled = segment_mean(atom_fea, batch.crystal_index, batch.n_crystals).requires_grad_(True)
            out = self.head(pooled)
            out = out[:, 1].exp() if self.task == "classification" else out.squeeze(1)
            (grad,) = torch.autograd.grad(out.sum(), pooled)
        index = batch.crystal_index
        out = out.detach()
        return out, out[index] + ((atom_fea - pooled.detach()[index]) * grad[index]).sum(dim=1)

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        """Predict: regression -> (n_crystals,) normalised values; classification ->
        (n_crystals, 2) log-probabilities."""
        atom_fea = self.atom_features(batch)
        if self.readout == "atomwise":
            per_atom = self.head(atom_fea).squeeze(1)
            return segment_mean(per_atom, batch.crystal_index, batch.n_crystals)
        out = self.head(segment_mean(atom_fea, batch.crystal_index, batch.n_crystals))
        return out.squeeze(1) if self.task == "regression" else out
