"""How far each form of the network's arithmetic lies from the authors' own predictions.

The authors' checkpoints run the reference arithmetic by default (``fast_network`` off: one product
``[v_i, v_j, u_ij] W`` per edge, then ``BN_1``), because the fast inference form
(:func:`cgcnn_ase.nn.inference.inference_network`: ``BN_1`` folded into ``W`` and the split product
``v_i W_1 + v_j W_2 + u_ij W_3``) moves some checkpoints' predictions further from the numbers the
authors' code printed than the 1e-5 of ``tests/test_conformance.py``. This script measures that, per
checkpoint, on the 297 reference structures, for four forms: the reference arithmetic, the fast form, and
each of its two ingredients alone (``BN_1`` folded into a concatenated product; the split product with
``BN_1`` kept). All run on one CPU thread, float32.

    python benchmarks/authors_arithmetic.py [--shared ../shared]
"""

from __future__ import annotations

import copy
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import click
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

CHECKPOINTS = (
    "band-gap", "bulk-moduli", "efermi", "final-energy-per-atom",
    "formation-energy-per-atom", "poisson-ratio", "semi-metal-classification", "shear-moduli",
)  # fmt: skip


def _folded_concatenated(network: torch.nn.Module) -> torch.nn.Module:
    """``BN_1`` folded into ``fc_full``, the product kept as one ``[v_i, v_j, u_ij] W`` per edge."""
    from cgcnn_ase.nn.network import ConvLayer

    network = copy.deepcopy(network).eval()
    with torch.no_grad():
        for conv in network.convs:
            if not isinstance(conv, ConvLayer):
                continue
            bn = conv.bn1
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.fc_full.weight.mul_(scale.unsqueeze(1))
            conv.fc_full.bias.copy_((conv.fc_full.bias - bn.running_mean) * scale + bn.bias)
            # BN_1 becomes the identity exactly: (x - 0) / sqrt(1 + 0) * 1 + 0
            bn.running_mean.zero_(), bn.running_var.fill_(1.0), bn.weight.fill_(1.0), bn.bias.zero_()
            bn.eps = 0.0
    return network


def _split_unfolded(network: torch.nn.Module) -> torch.nn.Module:
    """The split product with ``BN_1`` applied as in the reference arithmetic."""
    network = copy.deepcopy(network).eval()
    network.set_execution(split_matmul=True)
    return network


@click.command()
@click.option("--shared", default=None, help="the shared data folder (default: ../shared)")
def main(shared: str | None) -> None:
    from cgcnn_ase.inference.predictor import CGCNNPredictor
    from cgcnn_ase.io.reader import read_structures

    _common.quiet()
    torch.set_num_threads(1)
    reference = _common.shared_path(shared, "reference/cgcnn")
    atom_init = reference / "data" / "sample-regression" / "atom_init.json"
    manifest = pd.read_csv(reference / "structures" / "manifest.csv")
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(reference / "structures" / "cifs.tar.gz") as archive:
            archive.extractall(tmp, filter="data")
        folder = next(Path(tmp).rglob("*.cif")).parent
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = [read_structures(folder / f"{i}.cif", cif_reader="pymatgen")[0] for i in manifest.cif_id]

    rows = []
    for name in CHECKPOINTS:
        predictor = CGCNNPredictor.from_checkpoint(reference / "pre-trained" / f"{name}.pth.tar",
                                                   atom_init=atom_init, device="cpu")  # fmt: skip
        table = pd.read_csv(reference / "predictions" / f"{name}.csv").set_index("cif_id")
        expected = table.loc[manifest.cif_id, "probability" if name == "semi-metal-classification" else "prediction"]
        expected = expected.to_numpy()

        def predict(predictor: CGCNNPredictor = predictor) -> np.ndarray:
            return predictor.predict(records, batch_size=256, on_sparse="ignore").values

        got = {"reference arithmetic (default)": predict()}
        predictor.fast_network = True
        got["fast form (`fast_network=True`)"] = predict()
        predictor.fast_network = None
        own_heads = predictor.model.heads
        for label, form in (("BN_1 folded, one product", _folded_concatenated), ("split product, BN_1 kept", _split_unfolded)):
            heads = [(form(net), mean, std) for net, mean, std in own_heads()]
            predictor.model.heads = lambda heads=heads: heads  # type: ignore[method-assign]
            got[label] = predict()
            predictor.model.heads = own_heads  # type: ignore[method-assign]
        rows.append([name, f"{np.abs(expected).max():.2f}", *(f"{np.abs(v - expected).max():.1e}" for v in got.values())])
        print(f"  {name} done", flush=True)
    print(_common.markdown_table(["checkpoint", "largest abs. prediction", *got], rows))
    print(_common.machine_line())


if __name__ == "__main__":
    main()
