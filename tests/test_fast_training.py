"""The fast training step (GatedMessages, the in-place split product) keeps the plain layer's maths.

Compared on small synthetic batches (no ../shared needed): loss, every parameter gradient and the
batch norms' running statistics, in float64 (to 1e-10: the same maths) and in float32 (to float32
rounding), with and without merged-edge weights; weighted edges against repeated edges in
float64; finite differences; a few SGD steps; bf16 autocast.
"""

from __future__ import annotations

import copy

import pytest
import torch

import cgcnn_ase.nn.fused as fused_module
from cgcnn_ase.graph.batch import GraphBatch
from cgcnn_ase.nn.fused import GatedMessages
from cgcnn_ase.nn.network import ConvLayer, CrystalGraphConvNet
from cgcnn_ase.train.steps import TrainingForward

ARCH = {"orig_atom_fea_len": 12, "nbr_fea_len": 7, "atom_fea_len": 8, "n_conv": 3, "h_fea_len": 16, "n_h": 2}


def random_batch(seed: int, *, weighted: bool, dtype: torch.dtype = torch.float32) -> GraphBatch:
    """Six crystals of 3-6 atoms, 4-9 edges per atom (neighbours within the crystal), optional
    integer multiplicities 1-4."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(3, 7, (6,), generator=g)
    centers, neighbors, crystal, start = [], [], [], 0
    for k, n in enumerate(sizes.tolist()):
        for i in range(n):
            m = int(torch.randint(4, 10, (1,), generator=g))
            centers += [start + i] * m
            neighbors += (start + torch.randint(0, n, (m,), generator=g)).tolist()
        crystal += [k] * n
        start += n
    e = len(centers)
    return GraphBatch(
        atom_fea=torch.rand(start, ARCH["orig_atom_fea_len"], generator=g, dtype=dtype),
        edge_fea=torch.rand(e, ARCH["nbr_fea_len"], generator=g, dtype=dtype),
        centers=torch.tensor(centers),
        neighbors=torch.tensor(neighbors),
        crystal_index=torch.tensor(crystal),
        n_crystals=len(sizes),
        edge_weight=torch.randint(1, 5, (e,), generator=g).to(dtype) if weighted else None,
    )


def network(dtype: torch.dtype = torch.float32) -> CrystalGraphConvNet:
    torch.manual_seed(0)
    net = CrystalGraphConvNet(**ARCH).to(dtype).train()
    with torch.no_grad():  # batch-norm affine parameters away from their (1, 0) start
        for conv in net.convs:
            conv.bn1.weight.uniform_(0.5, 1.5)
            conv.bn1.bias.uniform_(-0.5, 0.5)
    net.set_execution(split_matmul=True, fused=False)  # the plain layer; tests turn fused on
    return net


def one_step(net: CrystalGraphConvNet, batch: GraphBatch, target: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
    """Loss, gradients and state (running statistics) after one forward/backward pass."""
    loss = torch.nn.functional.mse_loss(net(batch), target)
    net.zero_grad()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    return loss.detach(), grads, {k: v.clone() for k, v in net.state_dict().items()}


def compare(plain: tuple, fused: tuple, rtol: float) -> None:
    """Loss, gradients and state equal to ``rtol`` times each tensor's largest magnitude."""
    (loss_a, grads_a, state_a), (loss_b, grads_b, state_b) = plain, fused
    torch.testing.assert_close(loss_b, loss_a, rtol=rtol, atol=0)
    scale = max(g.abs().max().item() for g in grads_a.values())
    for name, grad in grads_a.items():
        # fc_full.bias feeds BN_1 only: its gradient is 0 in exact arithmetic, rounding noise here
        atol = rtol * (scale if name.endswith("fc_full.bias") else grad.abs().max().item())
        torch.testing.assert_close(grads_b[name], grad, rtol=0, atol=atol, msg=f"gradient of {name}")
    for name, value in state_a.items():
        atol = rtol * max(value.abs().max().item(), 1e-30) if value.is_floating_point() else 0
        torch.testing.assert_close(state_b[name], value, rtol=0, atol=atol, msg=f"state {name}")


@pytest.mark.parametrize("rows", [None, 7])  # 7: the eager passes in many row blocks, the last one partial
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_fused_step_equals_plain_step(weighted, dtype, rtol, rows, monkeypatch):
    if rows is not None:
        monkeypatch.setattr(fused_module, "ROWS", rows)
    batch = random_batch(1, weighted=weighted, dtype=dtype)
    target = torch.linspace(-1, 1, batch.n_crystals, dtype=dtype)
    plain = network(dtype)
    fused = copy.deepcopy(plain)
    fused.set_execution(fused=True)
    a, b = one_step(plain, batch, target), one_step(fused, batch, target)
    assert plain.convs[0].bn1.num_batches_tracked.item() == 1
    compare(a, b, rtol)
    assert b[1]["convs.0.bn1.weight"].abs().max() > 1e-3  # the compared gradients are not all ~0


def test_fused_weighted_edges_equal_repeated_edges():
    """An edge of weight m counts as m identical edges in the fused path too (sums, statistics, gradients)."""
    merged = random_batch(2, weighted=True, dtype=torch.float64)
    repeat = merged.edge_weight.long()
    unmerged = GraphBatch(
        atom_fea=merged.atom_fea,
        edge_fea=merged.edge_fea.repeat_interleave(repeat, dim=0),
        centers=merged.centers.repeat_interleave(repeat),
        neighbors=merged.neighbors.repeat_interleave(repeat),
        crystal_index=merged.crystal_index,
        n_crystals=merged.n_crystals,
    )
    target = torch.linspace(-1, 1, merged.n_crystals, dtype=torch.float64)
    a = network(torch.float64)
    a.set_execution(fused=True)
    b = copy.deepcopy(a)
    compare(one_step(a, unmerged, target), one_step(b, merged, target), 1e-10)


def test_gated_messages_gradcheck():
    """The hand-written backward equals finite differences (float64), weighted and not."""
    g = torch.Generator().manual_seed(3)
    n_atoms, e, a = 5, 17, 3
    centers = torch.randint(0, n_atoms, (e,), generator=g)
    products = torch.randn(e, 2 * a, generator=g, dtype=torch.float64, requires_grad=True)
    gamma = (torch.rand(2 * a, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    beta = torch.randn(2 * a, generator=g, dtype=torch.float64, requires_grad=True)
    for weight in (None, torch.randint(1, 4, (e,), generator=g).double()):
        def summed(p, gm, bt, weight=weight):
            return GatedMessages.apply(p, gm, bt, centers, n_atoms, weight, 1e-5)[0]

        assert torch.autograd.gradcheck(summed, (products, gamma, beta))


def test_fused_is_the_default_for_training():
    """New networks (and so train_from_config's eager and compiled steps) use the fused layer."""
    torch.manual_seed(0)
    net = CrystalGraphConvNet(**ARCH)
    TrainingForward(net, net, compile=False)
    assert all(conv.fused and not conv.opaque_indexing for conv in net.convs if isinstance(conv, ConvLayer))


def test_fused_steps_train_like_plain_steps():
    """Five SGD steps (momentum, two batches, weighted edges) end at the same weights to float32 rounding."""
    batches = [random_batch(s, weighted=True) for s in (4, 5)]
    nets = []
    for fused in (False, True):
        net = network()
        net.set_execution(fused=fused)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for step in range(5):
            batch = batches[step % 2]
            loss = torch.nn.functional.mse_loss(net(batch), torch.linspace(-1, 1, batch.n_crystals))
            opt.zero_grad()
            loss.backward()
            opt.step()
        nets.append(net)
    for (name, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{name} after 5 steps")


def bf16_step(batch: GraphBatch, *, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and first convolution's weight gradient of one MSE step of :func:`network` under bf16 autocast."""
    net = network()
    net.set_execution(fused=fused)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(batch)
    torch.nn.functional.mse_loss(out.float(), torch.linspace(-1, 1, batch.n_crystals)).backward()
    return out.float().detach(), net.convs[0].fc_full.weight.grad


def test_fused_layer_under_bf16_autocast():
    """bf16 autocast: the fused statistics and gates run in float32, as the plain layer's batch norm does."""
    batch = random_batch(6, weighted=True)
    results = [bf16_step(batch, fused=fused) for fused in (False, True)]
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=3e-2)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=3e-2 * results[0][1].abs().max().item())


def test_eval_mode_ignores_the_fused_flag():
    """Validation and prediction (eval mode, running statistics) take the plain path, bit for bit."""
    batch = random_batch(7, weighted=True)
    net = network()
    net(batch)  # some running statistics
    net.eval()
    with torch.no_grad():
        plain = net(batch)
        net.set_execution(fused=True)
        assert torch.equal(net(batch), plain)


def compiled_against_eager(eager_batch: GraphBatch, compiled_batch: GraphBatch) -> None:
    """One fused training step, eager on ``eager_batch`` and through ``torch.compile`` (fullgraph, dynamic,
    as training compiles) on ``compiled_batch``: the same loss, gradients and statistics (2e-5)."""
    import os
    import shutil

    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        if os.environ.get("CGCNN_REQUIRE_SHARED"):  # CI: every test must run
            pytest.fail("no C++ compiler on PATH: torch.compile cannot build CPU kernels")
        pytest.skip("no C++ compiler on PATH: torch.compile cannot build CPU kernels here")
    target = torch.linspace(-1, 1, eager_batch.n_crystals)
    eager = network()
    eager.set_execution(fused=True)
    compiled = copy.deepcopy(eager)
    step = torch.compile(compiled, fullgraph=True, dynamic=True)  # a graph break raises here
    a = one_step(eager, eager_batch, target)
    loss = torch.nn.functional.mse_loss(step(compiled_batch), target)
    compiled.zero_grad()
    loss.backward()
    b = (loss.detach(), {k: p.grad.clone() for k, p in compiled.named_parameters()}, compiled.state_dict())
    compare(a, b, 2e-5)


def test_fused_layer_compiles_in_one_graph():
    """torch.compile traces the fused layer without graph breaks (fullgraph) and computes the same step."""
    batch = random_batch(8, weighted=True)
    compiled_against_eager(batch, batch)
