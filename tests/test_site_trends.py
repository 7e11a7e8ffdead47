"""Site energies per seed, their aggregation, other site-energy definitions, the paper's trends and the scored screen."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from cgcnn_ase.analysis.screening import score_screen, screen_perovskites
from cgcnn_ase.analysis.site_maps import periodic_table_heatmap, site_energy_maps, write_site_report
from cgcnn_ase.analysis.site_members import (
    additive_site_energies,
    aggregate_members,
    cation_site_energies,
    cell_table,
    member_predictors,
    member_site_contributions,
    member_site_energies,
)
from cgcnn_ase.analysis.site_trends import (
    cell_coupling,
    data_cells,
    data_site_means,
    energy_flow,
    member_trends,
    parse_abx3,
    radius_table,
    site_trends,
    summarize_trends,
)
from cgcnn_ase.inference.predictor import CGCNNPredictor
from cgcnn_ase.models.folder import EnsembleMember, LoadedModel

from .conftest import perovskite, random_model, rattled


def _ensemble(n: int = 3) -> LoadedModel:
    """n random atomwise networks, each with its own normaliser, as one ensemble."""
    singles = [random_model(readout="atomwise", seed=10 + k) for k in range(n)]
    members = [EnsembleMember(s.network, normalizer_mean=-1.0 + 0.3 * k, normalizer_std=0.5 + 0.1 * k)
               for k, s in enumerate(singles)]  # fmt: skip
    first = singles[0]
    return LoadedModel(spec=first.spec, network=first.network, elements=first.elements, members=members)


def _structures() -> dict:
    sto = perovskite()
    bto = perovskite(4.0)
    bto.symbols[0] = "Ba"
    return {"SrTiO3": rattled(sto, seed=1), "BaTiO3": rattled(bto, seed=2), "SrTiO3-2x": rattled(sto * (2, 1, 1), seed=3)}


# -- contributions per seed -----------------------------------------------------------------------


def test_every_members_contributions_average_to_its_own_prediction():
    ensemble = CGCNNPredictor(_ensemble(3), device="cpu")
    structures = _structures()
    stacked = member_site_contributions(ensemble, structures, batch_size=2, on_sparse="ignore")
    assert sorted(stacked["member"].unique()) == [0, 1, 2] and stacked.attrs["n_members"] == 3
    assert len(stacked) == 3 * sum(len(a) for a in structures.values())
    direct = ensemble.predict(list(structures.values()), on_sparse="ignore")
    for k in range(3):
        block = stacked[stacked["member"] == k]
        means = block.groupby("structure", sort=False)["contribution"].mean()
        predictions = block.groupby("structure", sort=False)["prediction"].first()
        np.testing.assert_allclose(means.to_numpy(), predictions.to_numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(predictions.to_numpy(), direct.member_values[:, k], rtol=0, atol=1e-6)
    # the members differ (their split among sites is not the same), and their mean is the ensemble's
    a, b = (stacked[stacked["member"] == k]["contribution"].to_numpy() for k in (0, 1))
    assert np.abs(a - b).max() > 1e-3
    seed_mean = stacked.groupby(["structure", "site"], sort=False)["prediction"].mean().groupby("structure").first()
    np.testing.assert_allclose(seed_mean.loc[list(structures)].to_numpy(), direct.values, atol=1e-6)
    # roles come from member 0 and are the same for all
    roles = stacked[stacked["structure"] == "BaTiO3"].groupby("member")["role"].agg(list)
    assert all(r == ["A", "B", "X", "X", "X"] for r in roles)


def test_member_predictors_of_lists_and_single_models():
    single = CGCNNPredictor(random_model(readout="atomwise", seed=1), device="cpu")
    predictors = member_predictors([CGCNNPredictor(_ensemble(2), device="cpu"), single])
    assert len(predictors) == 3
    assert all(not p.is_ensemble for p in predictors)
    assert [p.model.spec.normalizer_mean for p in predictors] == pytest.approx([-1.0, -0.7, -1.0])


# -- aggregation per element and role ------------------------------------------------------------


def _hand_stacked() -> pd.DataFrame:
    """Two members, two 5-atom cells each: SrTiO3 and BaTiO3 (made-up contributions)."""
    roles = ["A", "B", "X", "X", "X"]
    rows = []
    values = {
        0: {"s1": [1.0, 2.0, 3.0, 4.0, 5.0], "s2": [-1.0, 4.0, 6.0, 7.0, 8.0]},
        1: {"s1": [3.0, 0.0, 3.0, 4.0, 5.0], "s2": [1.0, 2.0, 6.0, 7.0, 8.0]},
    }
    elements = {"s1": ["Sr", "Ti", "O", "O", "O"], "s2": ["Ba", "Ti", "O", "O", "N"]}
    for member, cells in values.items():
        for structure, contributions in cells.items():
            for site, (role, el, c) in enumerate(zip(roles, elements[structure], contributions)):
                rows.append(dict(structure=structure, site=site, element=el, role=role, contribution=c, member=member,
                                 prediction=float(np.mean(contributions))))  # fmt: skip
    return pd.DataFrame(rows)


def test_aggregate_members_hand_example():
    out = aggregate_members(_hand_stacked()).set_index(["role", "element"])
    # Ti on B: member 0 mean (2 + 4) / 2 = 3, member 1 mean (0 + 2) / 2 = 1 -> seed mean 2, seed std sqrt(2)
    assert out.loc[("B", "Ti"), "mean"] == pytest.approx(2.0)
    assert out.loc[("B", "Ti"), "seed_std"] == pytest.approx(np.sqrt(2.0))
    assert (out.loc[("B", "Ti"), "seed_min"], out.loc[("B", "Ti"), "seed_max"]) == (1.0, 3.0)
    assert out.loc[("B", "Ti"), "count"] == 2 and out.loc[("B", "Ti"), "n_members"] == 2
    # Sr on A: 1 and 3
    assert out.loc[("A", "Sr"), "mean"] == pytest.approx(2.0)
    assert out.loc[("A", "Sr"), "seed_std"] == pytest.approx(np.sqrt(2.0))
    # O on X: the same in both members (3, 4, 5, 6, 7) -> no spread
    assert out.loc[("X", "O"), "mean"] == pytest.approx(5.0) and out.loc[("X", "O"), "seed_std"] == pytest.approx(0.0)
    assert list(out.index.get_level_values("role")) == ["A", "A", "B", "X", "X"]
    single = aggregate_members(_hand_stacked().query("member == 0").drop(columns="member"))
    assert single["seed_std"].isna().all() and (single["n_members"] == 1).all()


def test_cation_site_energies_share_the_x_sites():
    out = cation_site_energies(_hand_stacked()).set_index(["member", "structure", "role"])
    # member 0, s1: X total 12, two cations -> +6 each
    assert out.loc[(0, "s1", "A"), "raw"] == 1.0 and out.loc[(0, "s1", "A"), "x_share"] == pytest.approx(7.0)
    assert out.loc[(0, "s1", "B"), "x_share"] == pytest.approx(8.0)
    totals = out.groupby(["member", "structure"])["x_share"].sum()
    cells = _hand_stacked().groupby(["member", "structure"])["contribution"].sum()
    np.testing.assert_allclose(totals.to_numpy(), cells.loc[totals.index].to_numpy())
    table = cell_table(_hand_stacked()).set_index(["member", "structure"])
    assert table.loc[(1, "s2"), "X"] == {"O": 2.0, "N": 1.0}
    assert table.loc[(1, "s2"), "energy"] == pytest.approx(24.0)


def test_additive_site_energies_recover_additive_data():
    a_terms = {"Sr": 0.3, "Ba": -0.2, "La": 0.1, "Bi": 0.5}
    b_terms = {"Ti": -1.0, "Zr": -0.5, "Fe": 0.7}
    x_terms = {"O": -0.4, "N": 0.2}
    rows = []
    for (a, ea), (b, eb), xs in itertools.product(a_terms.items(), b_terms.items(), ({"O": 3}, {"O": 2, "N": 1})):
        rows.append(dict(A=a, B=b, X=xs, energy=ea + eb + sum(x_terms[el] * n for el, n in xs.items())))
    cells = pd.DataFrame(rows).sample(frac=1.0, random_state=1)
    fitted = additive_site_energies(cells).set_index(["role", "element"])["mean"]
    # terms are defined up to constants moved between roles; differences within a role are exact
    for role, terms in (("A", a_terms), ("B", b_terms), ("X", x_terms)):
        for el, value in terms.items():
            assert fitted[(role, el)] - fitted[(role, next(iter(terms)))] == pytest.approx(value - next(iter(terms.values())))
    estimate = fitted[("A", "Bi")] + fitted[("B", "Fe")] + 2 * fitted[("X", "O")] + fitted[("X", "N")]
    assert estimate == pytest.approx(0.5 + 0.7 - 0.8 + 0.2)


def test_member_site_energies_definitions():
    energies = member_site_energies(_hand_stacked())
    assert set(energies["definition"]) == {"raw", "x_share", "additive", "cell"}
    raw = energies[energies["definition"] == "raw"].set_index(["member", "role", "element"])["mean"]
    assert raw[(1, "A", "Ba")] == 1.0 and raw[(0, "X", "O")] == pytest.approx(5.0)
    share = energies[energies["definition"] == "x_share"].set_index(["member", "role", "element"])["mean"]
    assert share[(0, "A", "Ba")] == pytest.approx(-1.0 + 21.0 / 2)
    cell = energies[energies["definition"] == "cell"].set_index(["member", "role", "element"])["mean"]
    stacked = _hand_stacked()
    for (member, role, element), value in cell.items():  # the mean prediction of the cells holding the element
        holding = stacked[(stacked["member"] == member) & (stacked["role"] == role) & (stacked["element"] == element)]
        assert value == pytest.approx(holding["prediction"].mean())


# -- the trends -----------------------------------------------------------------------------------


def _fixture_data() -> pd.DataFrame:
    """A small Castelli-like table (A first in the formula), e_form in eV per cell."""
    rows = [("SrTiO3", 0.5), ("SrZrO3", 0.7), ("SrFeO3", 1.5), ("BaTiO3", 0.2), ("BaZrO3", 0.4), ("BaFeO3", 1.4),
            ("BiTiO3", 0.9), ("BiZrO3", 1.3), ("BiFeO3", 2.0), ("LiTiO3", 1.9), ("LiZrO3", 2.1), ("LiFeO3", 2.6),
            ("SrTiO2N", 1.0)]  # fmt: skip
    return pd.DataFrame(rows, columns=["formula", "e_form"], index=[f"id{k}" for k in range(len(rows))])


def test_parse_abx3():
    assert parse_abx3("TaKO2N") == ("Ta", "K", {"O": 2, "N": 1})
    assert parse_abx3("SrTiO3") == ("Sr", "Ti", {"O": 3})
    for bad in ("SrTiO2", "Sr", "srTiO3"):
        with pytest.raises(ValueError):
            parse_abx3(bad)


def test_data_site_means_and_trends_on_a_fixture():
    data = _fixture_data()
    means = data_site_means(data).set_index(["role", "element"])
    assert means.loc[("A", "Sr"), "mean"] == pytest.approx((0.5 + 0.7 + 1.5 + 1.0) / 4)
    assert means.loc[("A", "Sr"), "count"] == 4
    assert means.loc[("B", "Ti"), "mean"] == pytest.approx((0.5 + 0.2 + 0.9 + 1.9 + 1.0) / 5)
    assert means.loc[("B", "Fe"), "count"] == 4
    reference = data_site_means(data)
    trends = site_trends(reference, reference=reference, min_count=3)
    assert trends["spearman_data_A"] == pytest.approx(1.0) and trends["n_A"] == 4 and trends["n_B"] == 3
    a_site = reference[reference["role"] == "A"].set_index("element")["mean"]
    radius = radius_table(a_site.index)
    assert trends["radius_spearman_A"] == pytest.approx(spearmanr(a_site, radius.loc[a_site.index]).statistic)
    b_site = reference[reference["role"] == "B"].set_index("element")["mean"]
    assert trends["contrast_B_4_6"] == pytest.approx(b_site[["Ti", "Zr"]].mean() - b_site["Fe"])
    assert trends["contrast_A_13_15"] == pytest.approx(a_site["Bi"] - a_site[["Sr", "Ba", "Li"]].mean())
    assert trends["contrast_A_13_15_large"] == trends["contrast_A_13_15"]  # Bi is in period 6
    no_bi = site_trends(reference[reference["element"] != "Bi"])
    assert np.isnan(no_bi["contrast_A_13_15_large"]) and np.isnan(no_bi["contrast_A_13_15"])
    # min_count drops elements: on A, Sr has 4 cells and the others 3; on B, Ti 5, Zr and Fe 4
    fewer = site_trends(reference, reference=reference, min_count=4)
    assert (fewer["n_A"], fewer["n_B"]) == (1, 3) and np.isnan(fewer["spearman_data_A"])
    assert site_trends(reference, reference=reference, min_count=6)["n_B"] == 0
    # reversed ranks give -1
    flipped = reference.assign(mean=-reference["mean"])
    assert site_trends(flipped, reference=reference, min_count=1)["spearman_data_A"] == pytest.approx(-1.0)


def test_member_trends_and_their_spread():
    reference = data_site_means(_fixture_data())
    energies = pd.concat([reference.assign(member=0), reference.assign(member=1, mean=lambda d: -d["mean"])])
    trends = member_trends(energies, reference=reference, min_count=1)
    assert trends["spearman_data_A"].tolist() == pytest.approx([1.0, -1.0])
    summary = summarize_trends(trends).iloc[0]
    assert summary["spearman_data_A"] == pytest.approx(0.0)
    assert summary["spearman_data_A_std"] == pytest.approx(np.sqrt(2.0))
    assert summary["n_members"] == 2


def test_energy_flow_finds_energy_on_the_x_sites():
    """A-dependent energy put entirely on the X sites: the X share is 1."""
    rows = []
    for k, (a, b) in enumerate(itertools.product(["Sr", "Ba", "Ca"], ["Ti", "Zr"])):
        x_energy = {"Sr": 0.1, "Ba": -0.5, "Ca": 0.4}[a]
        b_energy = {"Ti": -1.0, "Zr": 2.0}[b]
        for site, (role, el, c) in enumerate(zip("ABXXX", [a, b, "O", "O", "O"], [0.3, b_energy, *[x_energy] * 3])):
            rows.append(dict(structure=f"c{k}", site=site, role=role, element=el, contribution=c))
    flow = energy_flow(pd.DataFrame(rows), role="A", min_count=1).set_index("part")
    assert flow.loc["X", "share"] == pytest.approx(1.0)
    assert flow.loc["A", "share"] == pytest.approx(0.0) and flow.loc["B", "share"] == pytest.approx(0.0)
    assert flow.loc["A", "spread"] == pytest.approx(0.0)
    by_b = energy_flow(pd.DataFrame(rows), role="B", min_count=1).set_index("part")
    assert by_b.loc["B", "share"] == pytest.approx(1.0)


def test_cell_coupling_separates_cell_following_from_local_site_energies():
    """Site outputs = element constant + the cell's prediction (slope 1) vs. outputs that ignore the cell (slope 0)."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(40):
        prediction = float(rng.normal())
        for site, (role, el) in enumerate(zip("ABX", ["Sr", "Ti", "O"])):
            offset = {"A": 1.0, "B": -2.0, "X": 0.5}[role]
            follows = offset + prediction  # A and B follow the cell
            contribution = follows if role != "X" else offset + 0.1 * rng.normal()  # X does not
            rows.append(dict(structure=f"c{k}", site=site, role=role, element=el, contribution=contribution,
                             prediction=prediction))  # fmt: skip
    coupling = cell_coupling(pd.DataFrame(rows)).set_index("role")
    assert coupling.loc["A", "slope"] == pytest.approx(1.0) and coupling.loc["A", "r2"] == pytest.approx(1.0)
    assert coupling.loc["B", "n"] == 40
    assert abs(coupling.loc["X", "slope"]) < 0.1 and coupling.loc["X", "r2"] < 0.2


# -- the screen scored against reference values ---------------------------------------------------


def test_score_screen_hand_example():
    energies = {"A": {"Ga": -1.0, "Bi": 1.0, "Sr": 0.0}, "B": {"Ti": -2.0, "Nb": 0.4, "Fe": 0.0}, "X": {"O": 0.0}}
    screen = screen_perovskites(energies, cutoff=-0.1)  # (A + B) / 5 < -0.1: GaTi, GaNb, BiTi
    assert set(screen.candidates["formula"]) == {"GaTiO3", "GaNbO3", "BiTiO3"}
    data = pd.DataFrame({"formula": ["GaTiO3", "GaNbO3", "BiNbO3", "SrFeO3", "SrTiO3", "GaTiO2N"],
                         "e_form": [-1.0, 0.5, -1.0, -1.0, 2.0, -5.0]})  # fmt: skip
    score = score_screen(screen, data_cells(data), cutoff=0.0, scale=0.2)
    # reference ABO3: GaTi (hit), GaNb, BiNb (hit), SrFe (hit), SrTi; GaTiO2N has another X
    assert (score.n_all, score.all_hits) == (5, 3)
    assert (score.n_candidates, score.candidate_hits) == (2, 1)  # BiTiO3 not in the data
    assert (score.n_considered, score.considered_hits) == (3, 2)  # GaTi, GaNb, BiNb
    assert score.candidate_rate == pytest.approx(0.5) and score.all_rate == pytest.approx(0.6)
    assert score.enrichment == pytest.approx(0.5 / 0.6) and score.recall == pytest.approx(0.5)
    assert "1/2" in score.summary()


# -- maps and the report with the seed spread -----------------------------------------------------


def test_maps_and_report_show_the_seed_spread(tmp_path):
    table = aggregate_members(_hand_stacked())
    paths = site_energy_maps(table, tmp_path / "maps", formats=("svg",))
    text = paths[0].read_text()
    assert "±" in text and "seed std over 2 members" in text
    plain = periodic_table_heatmap({"Sr": 1.0, "Ba": 2.0}, tmp_path / "plain.svg")
    assert "±" not in plain.read_text()

    ensemble = CGCNNPredictor(_ensemble(2), device="cpu")
    out = write_site_report(ensemble, _structures(), tmp_path / "report", formats=("png",), on_sparse="ignore")
    sites = pd.read_csv(out[0])
    by_element = pd.read_csv(out[1])
    assert {"seed_std", "contribution"} <= set(sites.columns) and (sites["seed_std"] > 0).all()
    direct = ensemble.predict(list(_structures().values()), on_sparse="ignore", per_atom=True)
    np.testing.assert_allclose(sites["contribution"].to_numpy(), np.concatenate(direct.per_atom), atol=1e-6)
    assert {"seed_std", "n_members"} <= set(by_element.columns) and (by_element["n_members"] == 2).all()
