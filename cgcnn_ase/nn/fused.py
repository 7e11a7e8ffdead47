"""The training-mode core of the gated convolution as one autograd Function with a hand-written backward.

From the edge products ``P = z W + b`` (E, 2A) to the messages summed onto their centre atoms (N, A):

.. math::
    \\hat P = (P - \\mu) r, \\quad G = \\gamma \\hat P + \\beta = G^f \\oplus G^s, \\quad
    S_i = \\sum_{e: c_e = i} w_e\\, \\sigma(G^f_e) \\odot \\mathrm{softplus}(G^s_e)

with ``μ``, ``r = 1 / sqrt(var + eps)`` the (multiplicity-weighted) batch statistics of ``P``, as
:func:`~cgcnn_ase.nn.ops.weighted_batch_norm` computes them. Autograd would keep every
intermediate and, for the weighted statistics, compute outer products as ``K = 1`` matrix
products; :class:`GatedMessages` keeps ``P̂``, ``σ(G^f)``, ``softplus(G^s)`` and ``σ(G^s)``
(so the backward pass evaluates no transcendental function) and writes the batch-norm backward
in closed form:

.. math::
    \\partial P_e = r \\big(h_e - \\tfrac{w_e}{n} (\\textstyle\\sum_k h_k + \\hat P_e \\sum_k h_k \\hat P_k)\\big),
    \\qquad h = \\gamma\\, \\partial G

(``n = Σ w``; the term autograd adds through ``∂μ`` of the variance is ``Σ w (P − μ) = 0``). Same
maths as the plain layer; float32 rounding differs (tested against it: outputs, running
statistics and every gradient; ``tests/test_fast_training.py``).

Eagerly, the passes over the edge rows run in blocks of :data:`ROWS` rows, so each block's
temporaries stay in a core's cache (the sums onto atoms keep the row order). Under
``torch.compile`` the same maths is written as whole-tensor operations, which inductor fuses.
Statistics, gates and gradients are computed in float32 under bf16 autocast (float64 inputs
stay float64).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["GatedMessages", "gated_messages"]


class GatedMessages(torch.autograd.Function):
    """Batch norm ``BN_1``, gates and the sum onto centre atoms, for training (see the module doc).

    ``forward(ctx, products, gamma, beta, centers, n_atoms, edge_weight, eps)`` returns the
    summed messages (N, A) and, without gradients, the batch mean and biased variance of the
    products (2A,) for the caller's running statistics. ``edge_weight`` (E,) float32 or ``None``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        products: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        centers: torch.Tensor,
        n_atoms: int,
        edge_weight: torch.Tensor | None,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.products_dtype = products.dtype
        p = products if products.dtype in (torch.float32, torch.float64) else products.float()
        gamma, beta = gamma.to(p.dtype), beta.to(p.dtype)
        with torch.autocast(products.device.type, enabled=False):  # statistics and gates in float32 (or float64)
            a = p.shape[1] // 2
            # statistics weighted by each row's share of the batch (multiplicity counted); eagerly as
            # matrix-vector products (torch.var_mean over dim 0 measured 80x slower on a CPU)
            if edge_weight is None:
                share = p.new_full((p.shape[0],), 1.0 / p.shape[0])
            else:
                w = edge_weight.to(p.dtype)
                share = w / w.sum()
            if not torch.compiler.is_compiling():  # eager: row blocks whose temporaries stay in the CPU's cache
                summed, mean, var, saved = _forward_blocks(p, share, gamma, beta, centers, n_atoms, edge_weight, eps)
                ctx.save_for_backward(*saved, gamma, centers, edge_weight, share)
                ctx.mark_non_differentiable(mean, var)
                return summed, mean, var
            column = share.unsqueeze(1)  # elementwise weighted sums, which the compiler fuses with their producers
            mean = (column * p).sum(0)
            centred = p - mean
            var = (column * centred * centred).sum(0)
            rstd = torch.rsqrt(var + eps)
            xhat = centred.mul_(rstd)
            gated = (xhat * gamma).add_(beta)
            core = gated[:, a:]
            sig = torch.sigmoid(gated[:, :a])
            sp = torch.nn.functional.softplus(core)
            sig_core = torch.sigmoid(core)  # softplus' (sigmoid is much cheaper than exp on CPUs)
            messages = sig * sp
            if edge_weight is not None:
                messages.mul_(edge_weight.to(p.dtype).unsqueeze(1))
            summed = messages.new_zeros((n_atoms, a)).index_add_(0, centers, messages)
            ctx.save_for_backward(xhat, sig, sp, sig_core, rstd, gamma, centers, edge_weight, share)
            ctx.mark_non_differentiable(mean, var)
            return summed, mean, var

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_summed: torch.Tensor, _grad_mean: Any, _grad_var: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None, None, None]:
        xhat, sig, sp, sig_core, rstd, gamma, centers, edge_weight, share = ctx.saved_tensors
        if not torch.compiler.is_compiling():
            grad_products, grad_gamma, grad_beta = _backward_blocks(
                grad_summed, xhat, sig, sp, sig_core, rstd, gamma, centers, edge_weight, share
            )
            return grad_products.to(ctx.products_dtype), grad_gamma, grad_beta, None, None, None, None
        grad_messages = grad_summed.to(xhat.dtype).index_select(0, centers)  # (E, A)
        if edge_weight is not None:
            grad_messages.mul_(edge_weight.to(xhat.dtype).unsqueeze(1))
        grad_gated = _grad_gated(grad_messages, sig, sp, sig_core)
        grad_beta = grad_gated.sum(0)
        grad_gamma = (grad_gated * xhat).sum(0)
        scale = gamma * rstd
        correction = (xhat * (scale * grad_gamma)).add_(scale * grad_beta)
        grad_products = grad_gated.mul_(scale)
        grad_products.addcmul_(correction, share.unsqueeze(1), value=-1.0)
        return grad_products.to(ctx.products_dtype), grad_gamma, grad_beta, None, None, None, None


#: rows per block of the eager passes: a block's (ROWS, 2A) float32 temporaries (512 KiB at 2A = 128)
#: stay in a CPU core's L2 cache; 1024 measured 6% faster eager epochs than one block (A/B, one thread)
ROWS = 1024


def _forward_blocks(
    p: torch.Tensor,
    share: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    centers: torch.Tensor,
    n_atoms: int,
    edge_weight: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """GatedMessages' eager forward in blocks of :data:`ROWS` rows (same sums, in the same row order).

    Returns the summed messages (N, A), mean and biased variance (2A,), and the tensors the
    backward pass needs: ``P̂`` (E, 2A), ``σ(G^f)``, ``softplus(G^s)``, ``σ(G^s)`` (E, A) each, ``r``.
    """
    e, a = p.shape[0], p.shape[1] // 2
    mean = share @ p
    centred = torch.empty_like(p)
    var = p.new_zeros(p.shape[1])
    for s in range(0, e, ROWS):
        block = torch.sub(p[s : s + ROWS], mean, out=centred[s : s + ROWS])
        var.addmv_((block * block).T, share[s : s + ROWS])
    rstd = torch.rsqrt(var + eps)
    sig, sp, sig_core = (p.new_empty((e, a)) for _ in range(3))
    summed = p.new_zeros((n_atoms, a))
    weight = None if edge_weight is None else edge_weight.to(p.dtype).unsqueeze(1)
    for s in range(0, e, ROWS):
        rows = slice(s, s + ROWS)
        gated = (centred[rows].mul_(rstd) * gamma).add_(beta)  # centred becomes P̂ in place
        torch.sigmoid(gated[:, :a], out=sig[rows])
        torch._C._nn.softplus(gated[:, a:], 1.0, 20.0, out=sp[rows])
        torch.sigmoid(gated[:, a:], out=sig_core[rows])  # softplus' (sigmoid is much cheaper than exp on CPUs)
        messages = sig[rows] * sp[rows]
        if weight is not None:
            messages.mul_(weight[rows])
        summed.index_add_(0, centers[rows], messages)
    return summed, mean, var, (centred, sig, sp, sig_core, rstd)


def _grad_gated(
    grad_messages: torch.Tensor,
    sig: torch.Tensor,
    sp: torch.Tensor,
    sig_core: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[∂G^f | ∂G^s]`` from the messages' gradient (E, A) (modified in place) -> (E, 2A), written into
    ``out`` (contiguous rows; eager only) when given."""
    grad_filter = torch.ops.aten.sigmoid_backward(grad_messages * sp, sig)
    grad_core = grad_messages.mul_(sig).mul_(sig_core)  # softplus' = σ
    if out is not None:
        return torch.cat([grad_filter, grad_core], dim=1, out=out)
    return torch.cat([grad_filter, grad_core], dim=1)  # (no out= into column slices: a torch.compile graph break)


def _backward_blocks(
    grad_summed: torch.Tensor,
    xhat: torch.Tensor,
    sig: torch.Tensor,
    sp: torch.Tensor,
    sig_core: torch.Tensor,
    rstd: torch.Tensor,
    gamma: torch.Tensor,
    centers: torch.Tensor,
    edge_weight: torch.Tensor | None,
    share: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GatedMessages' eager backward in blocks of :data:`ROWS` rows: ``∂P`` (E, 2A), ``∂γ``, ``∂β``."""
    e = xhat.shape[0]
    grad_summed = grad_summed.to(xhat.dtype)
    weight = None if edge_weight is None else edge_weight.to(xhat.dtype).unsqueeze(1)
    grad_products = torch.empty_like(xhat)  # holds ∂G until the second sweep
    grad_beta = xhat.new_zeros(xhat.shape[1])
    grad_gamma = xhat.new_zeros(xhat.shape[1])
    for s in range(0, e, ROWS):
        rows = slice(s, s + ROWS)
        grad_messages = grad_summed.index_select(0, centers[rows])
        if weight is not None:
            grad_messages.mul_(weight[rows])
        grad_gated = _grad_gated(grad_messages, sig[rows], sp[rows], sig_core[rows], out=grad_products[rows])
        grad_beta += grad_gated.sum(0)
        grad_gamma += (grad_gated * xhat[rows]).sum(0)
    scale = gamma * rstd
    beta_term, gamma_term = scale * grad_beta, scale * grad_gamma
    for s in range(0, e, ROWS):
        rows = slice(s, s + ROWS)
        correction = (xhat[rows] * gamma_term).add_(beta_term)
        grad_products[rows].mul_(scale).addcmul_(correction, share[rows].unsqueeze(1), value=-1.0)
    return grad_products, grad_gamma, grad_beta


def gated_messages(
    products: torch.Tensor,
    bn: torch.nn.BatchNorm1d,
    centers: torch.Tensor,
    n_atoms: int,
    edge_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Σ_j w σ(G^f) ⊙ softplus(G^s)`` with ``G = bn(products)`` in training mode, as (N, A).

    Updates ``bn``'s running statistics as ``bn`` (or, with ``edge_weight``,
    :func:`~cgcnn_ase.nn.ops.weighted_batch_norm`) would: momentum update of the mean and of
    the unbiased variance over ``Σ w`` rows. ``bn`` must be affine and in training mode.
    """
    summed, mean, var = GatedMessages.apply(products, bn.weight, bn.bias, centers, n_atoms, edge_weight, bn.eps)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            n = float(products.shape[0]) if edge_weight is None else edge_weight.float().sum()
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked + 1)
            bn.num_batches_tracked.add_(1)
            bn.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            unbiased = var * (n / max(n - 1.0, 1.0)) if edge_weight is None else var * n / (n - 1).clamp(min=1)
            bn.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    return summed
