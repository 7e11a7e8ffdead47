"""How optimistic a best-epoch choice makes the validation split: best epoch against last epoch.

Reads the full-data runs of ``benchmarks/bench_finetune.py`` (``--out``, default
``runs/bench_finetune``; target ``shear``, size ``all``): each run's model folder holds the epoch with
the best validation MAE, and its ``run/checkpoint_last.pt`` the last epoch (cosine schedule, no early
stopping). Both are scored on the validation and the test split. If the best epoch's validation MAE
is lower than the last epoch's while their test MAEs agree, the difference is the optimism of the
choice; the test/validation ratio at the last epoch is what the split itself contributes.

    python benchmarks/selection_bias.py [--out runs/bench_finetune] [--target shear] [--shared ../shared]
"""

from __future__ import annotations

import statistics
import sys
import warnings
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from bench_finetune import TARGETS


@click.command()
@click.option("--out", default="runs/bench_finetune", show_default=True, help="bench_finetune.py's --out.")
@click.option("--target", default="shear", show_default=True)
@click.option("--shared", default=None, help="shared/ folder (default: ../shared next to the repo).")
def main(out: str, target: str, shared: str | None) -> None:
    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.analysis.evaluation import load_split_records

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    folders = sorted(p.parent for p in Path(out, target).glob("nall-r*/*/model.json"))
    if not folders:
        raise click.ClickException(f"no full-data runs under {out}/{target}: run benchmarks/bench_finetune.py first")
    dataset = _common.shared_path(shared, TARGETS[target]["data"]["path"])
    _, parts = load_split_records(folders[0], str(dataset), ("val", "test"), workers=1)

    def maes(predictor: CGCNNPredictor) -> dict[str, float]:
        return {s: float(np.mean(np.abs(predictor.predict(parts[s].records).values - parts[s].targets)))
                for s in ("val", "test")}  # fmt: skip

    rows, ratios = [], {"val": [], "test": [], "split": []}
    for folder in folders:
        best = maes(CGCNNPredictor.from_pretrained(folder, device="cpu"))
        last_predictor = CGCNNPredictor.from_pretrained(folder, device="cpu")
        last_predictor.fast_network = False  # the checkpoint's weights are loaded into the model's own network
        checkpoint = torch.load(folder / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
        last_predictor.model.network.load_state_dict(checkpoint["model"])
        last = maes(last_predictor)
        rows.append([f"{folder.parent.name}/{folder.name}", f"{best['val']:.4f}", f"{last['val']:.4f}",
                     f"{best['test']:.4f}", f"{last['test']:.4f}"])  # fmt: skip
        ratios["val"].append(best["val"] / last["val"])
        ratios["test"].append(best["test"] / last["test"])
        ratios["split"].append(last["test"] / last["val"])
    print(_common.markdown_table(["run", "val MAE, best epoch", "val MAE, last epoch", "test MAE, best epoch",
                                  "test MAE, last epoch"], rows))  # fmt: skip
    print(f"best / last epoch, mean over runs: validation {statistics.mean(ratios['val']):.3f}, "
          f"test {statistics.mean(ratios['test']):.3f}; test / validation at the last epoch "
          f"{statistics.mean(ratios['split']):.3f}")


if __name__ == "__main__":
    main()
