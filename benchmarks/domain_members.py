"""The uncertainty issue's domain checks for each member of an ensemble: which member's embeddings (or all of
them side by side) keep textbook rocksalts and strained training crystals inside the domain.

``tests/test_domain.py`` asserts for the shipped ``formation_energy`` that rocksalt MgO, CaO, KCl and NaCl and 50
training crystals strained by +2% and -2% all lie below the 80th domain percentile. The shipped summary is built
from member 0; this script rebuilds it from each member in turn, and from all members' standardised embeddings
placed side by side, and prints the same percentiles, with the share of test crystals above the 95th
(needs ``../shared``: the model's splits). It also lists which of 30 textbook crystals (``TEXTBOOK``: rocksalts,
zincblendes, wurtzites, elemental metals and semiconductors at room-temperature lattice constants) reach the
80th percentile, and gives two ensemble-wide rows: the median and the mean over the members of each crystal's
percentile (each member's summary built as above)::

    python benchmarks/domain_members.py pretrained_models/formation_energy-mp_cgcnn46k-v3
    python benchmarks/domain_members.py pretrained_models/formation_energy-mp_cgcnn46k-v3 --embedding hidden
    python benchmarks/domain_members.py FOLDER --strain-tolerance 0.5

It took about 3 minutes on this 2-core machine for a 5-member formation-energy ensemble (about 8 with
``--strain-tolerance``).

``--strain-tolerance F`` measures a variant that treats a little strain as near: every training crystal is also
embedded strained by +2% and by -2%, its tolerance is F times the larger of the two moves of its standardised
embedding, and a crystal's distance becomes the smallest ``max(0, |x - c| - tolerance(c))`` over its 32 nearest
training embeddings (validation crystals too, so the percentiles stay calibrated). The 50 strained crystals of
the check are among the training crystals whose tolerance is measured, so that row shows what the tolerance
does for them, not how it generalises.

``--strain-directions K`` measures another variant: 2,000 other training crystals (not the 50 of the check) are
embedded strained by +2% and -2%, and the K leading principal directions of how far their standardised embeddings
moved are removed from every standardised embedding (training, validation and queries alike) before the nearest
distances are taken. The median and mean rows then use these percentiles. A second check that the tolerance rows
cannot game: 50 further training crystals strained by +-1.5% and by +-3% (the last two columns).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROCKSALTS = {"MgO": 4.21, "CaO": 4.81, "KCl": 6.29, "NaCl": 5.64}  # lattice constants, Å (as tests/test_domain.py)
#: 30 textbook crystals built by ase at room-temperature lattice constants (Å): (formula, structure, a, c or None).
TEXTBOOK = [("NaCl", "rocksalt", 5.64, None), ("LiF", "rocksalt", 4.03, None), ("MgO", "rocksalt", 4.21, None),
            ("CaO", "rocksalt", 4.81, None), ("KCl", "rocksalt", 6.29, None), ("GaAs", "zincblende", 5.65, None),
            ("ZnS", "zincblende", 5.41, None), ("Si", "diamond", 5.43, None), ("Ge", "diamond", 5.66, None),
            ("C", "diamond", 3.57, None), ("CsCl", "cesiumchloride", 4.12, None), ("Cu", "fcc", 3.61, None),
            ("Al", "fcc", 4.05, None), ("Ni", "fcc", 3.52, None), ("Ag", "fcc", 4.09, None), ("Au", "fcc", 4.08, None),
            ("Fe", "bcc", 2.87, None), ("W", "bcc", 3.16, None), ("Mo", "bcc", 3.15, None), ("Na", "bcc", 4.29, None),
            ("K", "bcc", 5.23, None), ("Mg", "hcp", 3.21, 5.20), ("Ti", "hcp", 2.95, 4.78), ("Zn", "hcp", 2.66, 4.95),
            ("AlN", "wurtzite", 3.11, 4.98), ("GaN", "wurtzite", 3.19, 5.10), ("ZnO", "wurtzite", 3.25, 5.20),
            ("BN", "zincblende", 3.62, None), ("InP", "zincblende", 5.87, None), ("CdTe", "zincblende", 6.48, None)]  # fmt: skip


@click.command()
@click.argument("model")
@click.option("--strained", default=50, show_default=True, help="Training crystals strained by +2% and -2%.")
@click.option("--embedding", type=click.Choice(["pooled", "hidden"]), default="pooled", show_default=True,
              help="pooled: the mean-pooled atom features (what the shipped summaries use); hidden: the first "
                   "dense layer's output, softplus(W softplus(pooled) + b), which the prediction is read from.")  # fmt: skip
@click.option("--strain-tolerance", default=0.0, show_default=True,
              help="Also report each member with per-training-crystal strain tolerances of this fraction (0: off).")
@click.option("--strain-directions", default=0, show_default=True,
              help="Remove this many leading directions of strain displacement from the embeddings (0: off).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="torch CPU threads.")
def main(model: str, strained: int, embedding: str, strain_tolerance: float, strain_directions: int, threads: int) -> None:
    """Domain percentiles of the rocksalts, strained training crystals and 30 textbook crystals, per member of
    MODEL (a folder), and their median and mean over the members."""
    import torch
    from ase.build import bulk

    if strain_directions and embedding != "pooled":
        raise click.UsageError("--strain-directions works on the pooled embeddings only")

    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.analysis.evaluation import predict_quietly, load_split_records
    from cgcnn_ase.io.records import from_ase
    from cgcnn_ase.models.domain import DomainSummary, formula_size, nearest_rows
    from cgcnn_ase.models.folder import load_model_folder

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    _, parts = load_split_records(model, None, ("train", "val", "test"), workers=2)
    train = parts["train"].records
    picked_index = np.random.default_rng(0).choice(len(train), strained, replace=False)  # as the test
    picked = [train[i] for i in picked_index]
    queries = [from_ase(bulk(n, "rocksalt", a=a)) for n, a in ROCKSALTS.items()]
    queries += [replace(r, cell=r.cell * (1 + s)) for r in picked for s in (0.02, -0.02)]
    others = np.setdiff1d(np.arange(len(train)), picked_index)
    sample = np.random.default_rng(1).choice(others, min(2000, len(others)), replace=False)  # strain directions
    further = np.random.default_rng(2).choice(np.setdiff1d(others, sample), strained, replace=False)
    queries += [replace(train[i], cell=train[i].cell * (1 + s)) for i in further for s in (0.015, -0.015, 0.03, -0.03)]
    n_checked = len(queries)  # then the textbook crystals, then the test split (its share above the 95th)
    queries += [from_ase(bulk(n, s, a=a, **({"c": c} if c else {}))) for n, s, a, c in TEXTBOOK]
    queries += parts["test"].records
    sizes = [formula_size(r.numbers) for r in queries]
    reference_sizes = [formula_size(r.numbers) for r in parts["val"].records]
    full = load_model_folder(model)

    def report(name: str, train_emb: np.ndarray, val_emb: np.ndarray, query_emb: np.ndarray,
               strained_train: list[np.ndarray] | None = None, directions: np.ndarray | None = None) -> None:  # fmt: skip
        summary = DomainSummary.build(train_emb, val_emb, max_centers=None, max_bytes=None, reference_sizes=reference_sizes)
        if directions is not None:  # (K, d) orthonormal, standardised units: removed before every distance
            def projected(x: np.ndarray) -> np.ndarray:
                z = summary.standardise(x)
                return z - (z @ directions.T) @ directions

            centres = projected(train_emb)
            ref = nearest_rows(projected(val_emb), centres, 1)[1][:, 0]
            order = np.argsort(ref, kind="stable")
            summary = replace(summary, reference=ref[order], reference_sizes=np.asarray(reference_sizes)[order])
            pc = summary.percentiles(nearest_rows(projected(query_emb), centres, 1)[1][:, 0], sizes)
        elif not strained_train:
            pc = summary.percentiles(summary.distances(query_emb), sizes)
        else:
            centres = summary.standardise(train_emb)
            moved = [np.linalg.norm(summary.standardise(e) - centres, axis=1) for e in strained_train]
            tolerance = strain_tolerance * np.nan_to_num(np.maximum(*moved))

            def within(x: np.ndarray) -> np.ndarray:
                index, dist = nearest_rows(summary.standardise(x), centres, 32)
                return np.min(np.maximum(dist - tolerance[index], 0.0), axis=1)

            ref = within(val_emb)
            order = np.argsort(ref, kind="stable")
            summary = replace(summary, reference=ref[order], reference_sizes=np.asarray(reference_sizes)[order])
            pc = summary.percentiles(within(query_emb), sizes)
        if strained_train is None and (directions is not None) == (strain_directions > 0):
            percentiles.append(pc)  # the rows that the median and mean summarise
        show(name, pc)

    def show(name: str, pc: np.ndarray) -> None:
        salts = ", ".join(f"{k} {v:.1f}" for k, v in zip(ROCKSALTS, pc[:4]))
        textbook, test = pc[n_checked : n_checked + len(TEXTBOOK)], pc[n_checked + len(TEXTBOOK) :]
        checked, further = pc[4 : 4 + 2 * strained], pc[4 + 2 * strained : n_checked].reshape(strained, 4)
        flagged = ", ".join(f"{t[0]} {v:.0f}" for t, v in zip(TEXTBOOK, textbook) if v >= 80) or "none"
        print(f"| {name} | {salts} | {checked.max():.1f} | {(checked >= 80).sum()} of {len(checked)} | {flagged} | "
              f"{100 * np.mean(test > 95):.1f}% | {(further[:, :2] >= 80).sum()} | {(further[:, 2:] >= 80).sum()} |",
              flush=True)  # fmt: skip

    print("| embeddings of | rocksalt percentiles | strained: highest | strained: at or above 80 | "
          f"textbook crystals at or above 80 (of {len(TEXTBOOK)}) | test above 95 | further ±1.5%: at or above 80 "
          f"(of {2 * strained}) | further ±3%: at or above 80 |\n|---|---|---|---|---|---|---|---|")
    standardised, percentiles = [], []
    for k in range(len(full.heads())):
        one = load_model_folder(model, members=1)
        one.heads()[0][0].load_state_dict(full.heads()[k][0].state_dict())  # member k's weights
        predictor = CGCNNPredictor(one, device="cpu")
        predictor.model.domain = None  # embed only
        emb = [predict_quietly(predictor, recs, batch_size=256, progress=False, embeddings=True).embeddings
               for recs in (train, parts["val"].records, queries)]  # fmt: skip
        if embedding == "hidden":
            layer = full.heads()[k][0].conv_to_fc
            with torch.no_grad():
                emb = [torch.nn.functional.softplus(layer(torch.nn.functional.softplus(torch.as_tensor(e, dtype=torch.float32)))).numpy()
                       for e in emb]  # fmt: skip
        report(f"member {k}", *emb)
        if strain_tolerance > 0:
            strained_train = []
            for sign in (0.02, -0.02):
                e = predict_quietly(predictor, [replace(r, cell=r.cell * (1 + sign)) for r in train], batch_size=256,
                                     progress=False, embeddings=True).embeddings  # fmt: skip
                if embedding == "hidden":
                    with torch.no_grad():
                        e = torch.nn.functional.softplus(layer(torch.nn.functional.softplus(torch.as_tensor(e, dtype=torch.float32)))).numpy()
                strained_train.append(e)
            report(f"member {k}, strain tolerance {strain_tolerance}", *emb, strained_train=strained_train)
        if strain_directions > 0:
            summary = DomainSummary.build(emb[0], emb[1], max_centers=None, max_bytes=None)
            base = summary.standardise(emb[0][sample])
            moves = np.vstack([summary.standardise(predict_quietly(
                predictor, [replace(train[i], cell=train[i].cell * (1 + sign)) for i in sample], batch_size=256,
                progress=False, embeddings=True).embeddings) - base for sign in (0.02, -0.02)])  # fmt: skip
            moves = moves[np.isfinite(moves).all(axis=1)]
            directions = np.linalg.svd(moves, full_matrices=False)[2][:strain_directions]
            report(f"member {k}, {strain_directions} strain direction(s) removed", *emb, directions=directions)
        mean, std = emb[0].mean(0), emb[0].std(0) + 1e-12
        standardised.append([(e - mean) / std for e in emb])
    if len(standardised) > 1:
        members = np.stack(percentiles)
        removed = f", {strain_directions} strain direction(s) removed" if strain_directions else ""
        show(f"median of the members' percentiles{removed}", np.median(members, axis=0))
        show(f"mean of the members' percentiles{removed}", members.mean(axis=0))
        report("all members side by side", *(np.hstack([s[i] for s in standardised]) for i in range(3)))


if __name__ == "__main__":
    main()
