"""Tensor operators of the network: row gather/scatter, segment mean, weighted batch norm.

Shapes: ``N`` atoms, ``E`` edges, ``C`` channels. :func:`gather_rows` / :func:`scatter_rows` are
``index_select`` / ``index_add_`` registered as opaque ``torch.library`` operators, which the
compiled CPU training path uses instead of inductor's atomic adds (see
:meth:`~cgcnn_ase.nn.network.CrystalGraphConvNet.set_execution`); :func:`index_select_rows` and
:func:`index_add_rows` are the same maths as plain torch calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: On a CPU, inference convolutions process their edges in blocks of at most this many values of the
#: (edges, 2 x channels) pre-activations: 1 MB in float32, so a block's intermediates stay in a core's
#: cache. Whole-batch intermediates of several MB (and more for larger batches or stacked members) are
#: fresh memory each time, whose page faults cost more than the arithmetic: against one block, one
#: network ran 1.04-1.12x faster at batch 32 and 2.5-2.7x at batch 256, and the five stacked members
#: 1.6-1.7x (one thread, 1000 MP crystals in memory, ``benchmarks/bench_cpu_pass.py``).
CPU_BLOCK_VALUES = 1 << 18


def index_select_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` along rows: (N, ...) -> (len(index), ...)."""
    return values.index_select(0, index)


def index_add_rows(values: torch.Tensor, index: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Row sums ``out[index[k]] += values[k]`` into ``n_rows`` zero rows: (E, ...) -> (n_rows, ...)."""
    return values.new_zeros((n_rows, *values.shape[1:])).index_add_(0, index, values)


@torch.library.custom_op("cgcnn_ase::gather_rows", mutates_args=())
def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values.index_select(0, index)`` as one opaque operator (see :class:`~cgcnn_ase.nn.network.ConvLayer`'s
    ``opaque_indexing``); its gradient is :func:`scatter_rows`."""
    return index_select_rows(values, index)


@torch.library.custom_op("cgcnn_ase::scatter_rows", mutates_args=())
def scatter_rows(values: torch.Tensor, index: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Row sums ``out[index[k]] += values[k]`` into ``n_rows`` zero rows, as one opaque
    operator (aten's ``index_add_``); its gradient is :func:`gather_rows`."""
    return index_add_rows(values, index, n_rows)


@gather_rows.register_fake
def _gather_rows_shape(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return values.new_empty((index.shape[0], *values.shape[1:]))


@scatter_rows.register_fake
def _scatter_rows_shape(values: torch.Tensor, index: torch.Tensor, n_rows: int) -> torch.Tensor:
    return values.new_empty((n_rows, *values.shape[1:]))


def _keep_index(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[1])
    ctx.n_rows = inputs[0].shape[0]


def _gather_rows_grad(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
    (index,) = ctx.saved_tensors
    return scatter_rows(grad, index, ctx.n_rows), None


def _scatter_rows_grad(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
    (index,) = ctx.saved_tensors
    return gather_rows(grad, index), None, None


gather_rows.register_autograd(_gather_rows_grad, setup_context=_keep_index)


scatter_rows.register_autograd(_scatter_rows_grad, setup_context=_keep_index)


def segment_mean(values: torch.Tensor, index: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Mean of ``values`` (N, ...) over rows sharing ``index`` (N,), shape (n_segments, ...), in ``values``'
    dtype, summed in float64: a float32 sum, row after row, of a crystal's thousands of atoms drifts (an
    8000-atom NaCl supercell's formation energy moved 1e-5 eV/atom from its primitive cell's; float64 except
    on Apple's MPS, which has none)."""
    wide = torch.float64 if values.device.type != "mps" else torch.float32
    total = torch.zeros((n_segments, *values.shape[1:]), dtype=wide, device=values.device)
    total = total.index_add_(0, index, values.to(wide))
    # index_add_ rather than bincount: its output size is known before it runs (torch.compile needs that)
    ones = torch.ones(index.shape, dtype=wide, device=index.device)
    counts = ones.new_zeros(n_segments).index_add_(0, index, ones).clamp_min(1)
    return (total / counts.view(-1, *([1] * (values.dim() - 1)))).to(values.dtype)


def weighted_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``bn(x)`` as if row ``k`` of ``x`` appeared ``weight[k]`` times (integer multiplicities).

    In training mode the batch mean and (biased) variance are multiplicity-weighted and the
    running statistics are updated as ``bn`` would update them on the expanded rows
    (unbiased variance over ``sum(weight)`` rows); in eval mode each row is normalised by
    the running statistics, so the weights do not matter.

    Args:
        bn: the batch-norm layer (its affine parameters and running statistics are used).
        x: rows to normalise, shape (E, C); weight: multiplicities, shape (E,).
    """
    if not (bn.training or bn.running_mean is None):
        return bn(x)
    if x.dtype != torch.float64:
        x = x.float()  # statistics in float32, also under bf16 autocast (as autocast runs batch_norm)
    w = weight.to(x.dtype)
    n = w.sum()
    if torch.compiler.is_compiling():  # elementwise products and sums, which the compiler fuses into few loops
        share = (w / n).unsqueeze(1)
        mean = (share * x).sum(0)
        centred = x - mean
        var = (share * centred * centred).sum(0)
    else:  # eager: weighted sums as matrix-vector products, the fewest passes over the (E, C) rows
        mean = (w @ x) / n
        centred = x - mean
        var = (w @ (centred * centred)) / n
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked + 1)
            bn.num_batches_tracked.add_(1)
            bn.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            unbiased = var.detach() * n / (n - 1).clamp(min=1)
            bn.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    scale = torch.rsqrt(var + bn.eps)
    if not bn.affine:
        return centred * scale
    return torch.addcmul(bn.bias, centred, bn.weight * scale)  # one fused pass: bias + centred * scale


def gated_sum_in_blocks(
    preactivations: Callable[[int | None, int | None], torch.Tensor],
    centers: torch.Tensor,
    edge_weight: torch.Tensor | None,
    n_atoms: int,
    width: int,
) -> torch.Tensor:
    """``Σ_j σ(f_ij) ⊙ softplus(c_ij)`` onto each centre atom, (n_atoms, width): the message sum of a
    gated convolution whose batch norm is folded (inference), computed over blocks of edges.

    ``preactivations(lo, hi)`` gives edges ``lo:hi``'s rows ``[f | c]``, (hi - lo, 2·width), filters in
    the first ``width`` columns and cores in the rest (``lo = hi = None``: all edges). An edge of weight ``m`` counts ``m`` times. On a CPU
    the blocks hold at most :data:`CPU_BLOCK_VALUES` values; elsewhere, and under ``torch.compile``
    (whose fused loops need no blocks, and which would recompile for every number of blocks), all
    edges form one block.
    """

    def messages(lo: int | None, hi: int | None) -> torch.Tensor:
        out = preactivations(lo, hi)
        gated = torch.sigmoid(out[:, :width]) * nn.functional.softplus(out[:, width:])
        return gated if edge_weight is None else gated * edge_weight[lo:hi].to(gated.dtype).unsqueeze(1)

    if centers.device.type != "cpu" or torch.compiler.is_compiling():
        first = messages(None, None)  # one pass (no Python arithmetic on the traced sizes)
        return first.new_zeros(n_atoms, width).index_add_(0, centers, first)
    n_edges = len(centers)
    step = max(1, CPU_BLOCK_VALUES // (2 * width))
    summed = None
    for lo in range(0, n_edges, step):
        block = messages(lo, min(lo + step, n_edges))
        if summed is None:
            summed = block.new_zeros(n_atoms, width)
        summed.index_add_(0, centers[lo : lo + step], block)
    return summed if summed is not None else torch.zeros(n_atoms, width, device=centers.device)
