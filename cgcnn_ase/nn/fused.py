"""The training-mode core of the gated convolution as one autograd Function with a hand-written backward.

From the edge products ``P = z W + b`` (E, 2A) to the messages summed onto their centre atoms (N, A):

.. math::
    \\hat P = (P - \\mu) r, \\quad G = \\gamma \\hat P + \\beta = G^f \\oplus G^s, \\quad
    S_i = \\sum_{e: c_e = i} w_e\\, \\sigma(G^f_e) \\odot \\mathrm{softplus}(G^s_e)

with ``μ``, ``r = 1 / sqrt(var + eps)`` the (multiplicity-weighted) batch statistics of ``P``, as
:func:`~cgcnn_ase.nn.ops.weighted_batch_norm` computes them. Autograd would keep every
intermediate and, for the weighted statistics, compute outer products as ``K = 1`` matrix
products; :class:`GatedMessages` keeps ``P̂``, ``σ(G^f)``, ``softplus(G^s)`` and ``σ(G^s)``
(so the backward pass evaluates no transcendental function) and writes the batch-norm backward in closed form:

.. math::
    \\partial P_e = r \\big(h_e - \\tfrac{w_e}{n} (\\textstyle\\sum_k h_k + \\hat P_e \\sum_k h_k \\hat P_k)\\big),
    \\qquad h = \\gamma\\, \\partial G

(``n = Σ w``; the term autograd adds through ``∂μ`` of the variance is ``Σ w (P − μ) = 0``). Same
maths as the plain layer; float32 rounding differs (tested against it: outputs, running
statistics and every gradient).
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
            return GatedMessages._forward(ctx, p, gamma, beta, centers, n_atoms, edge_weight, eps)

    @staticmethod
    def _forward(
        ctx: Any,
        p: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        centers: torch.Tensor,
        n_atoms: int,
        edge_weight: torch.Tensor | None,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = p.shape[1] // 2
        # statistics as matrix-vector products with each row's share of the batch (multiplicity counted):
        # one read of the (E, 2A) rows each; torch.var_mean over dim 0 measured 80x slower on a CPU
        if edge_weight is None:
            share = p.new_full((p.shape[0],), 1.0 / p.shape[0])
        else:
            w = edge_weight.to(p.dtype)
            share = w / w.sum()
        if torch.compiler.is_compiling():  # elementwise weighted sums, which the compiler fuses with their producers
            column = share.unsqueeze(1)
            mean = (column * p).sum(0)
            centred = p - mean
            var = (column * centred * centred).sum(0)
        else:
            mean = share @ p
            centred = p - mean
            var = share @ (centred * centred)
        rstd = torch.rsqrt(var + eps)
        xhat = centred.mul_(rstd)
        gated = (xhat * gamma).add_(beta)  # not addcmul: with broadcast vectors it measured 2.6x slower
        core = gated[:, a:]
        sig = torch.sigmoid(gated[:, :a])
        sp = torch.nn.functional.softplus(core)
        sig_core = torch.sigmoid(core)  # softplus' (sigmoid is much cheaper than exp on CPUs)
        messages = sig * sp
        if edge_weight is not None:
            messages.mul_(w.unsqueeze(1))
        summed = messages.new_zeros((n_atoms, a)).index_add_(0, centers, messages)
        ctx.save_for_backward(xhat, sig, sp, sig_core, rstd, gamma, centers, edge_weight, share)
        ctx.mark_non_differentiable(mean, var)
        return summed, mean, var

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_summed: torch.Tensor, _grad_mean: Any, _grad_var: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None, None, None]:
        xhat, sig, sp, sig_core, rstd, gamma, centers, edge_weight, share = ctx.saved_tensors
        grad_messages = grad_summed.to(xhat.dtype).index_select(0, centers)  # (E, A)
        if edge_weight is not None:
            grad_messages.mul_(edge_weight.to(xhat.dtype).unsqueeze(1))
        grad_filter = torch.ops.aten.sigmoid_backward(grad_messages * sp, sig)
        grad_core = grad_messages.mul_(sig).mul_(sig_core)  # softplus' = σ
        grad_gated = torch.cat([grad_filter, grad_core], dim=1)  # (no out= into column slices: torch.compile
        # breaks its graph there)
        grad_beta = grad_gated.sum(0)
        grad_gamma = (grad_gated * xhat).sum(0)
        scale = gamma * rstd
        correction = (xhat * (scale * grad_gamma)).add_(scale * grad_beta)
        grad_products = grad_gated.mul_(scale)
        grad_products.addcmul_(correction, share.unsqueeze(1), value=-1.0)
        return grad_products.to(ctx.products_dtype), grad_gamma, grad_beta, None, None, None, None


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
