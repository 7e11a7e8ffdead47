"""Model cards (the ``README.md`` of a model folder) and the formatting helpers of ``model.json``.

The cards are Jinja2 templates kept with the package (``cgcnn_ase/models/templates/*.md.j2``),
rendered from plain data: the ``model.json`` document of the folder (which holds the resolved
training configuration under ``metadata.training.config``). :func:`model_card` renders a
single trained model's card (written by :mod:`cgcnn_ase.train.export`), :func:`ensemble_card`
an ensemble folder's (written by :mod:`cgcnn_ase.train.ensembles`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """Plain JSON data: NaN/inf -> None, numpy scalars -> Python, tuples and arrays -> lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a card: ``digits`` significant digits, trailing zeros kept (round 29d: an MAE of 0.10005 read
    "0.1", as if known to one digit); ``"n/a"`` for None, NaN and inf."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return significant(value, digits) if math.isfinite(value) else "n/a"
    return str(value)


def significant(value: float, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits, trailing zeros kept (``0.1`` -> ``"0.1000"``, ``1234.5`` ->
    ``"1234"``, ``2e-05`` -> ``"2.000e-05"``; ``-0.0`` -> ``"0.000"``)."""
    return f"{value + 0.0:#.{digits}g}".replace(".e", "e").rstrip(".")


def pct(value: Any) -> str:
    """A fraction as a percentage with one decimal (``0.683`` -> ``"68.3%"``); ``"n/a"`` for None, NaN and inf."""
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def symbols(numbers: Iterable[int]) -> str:
    """Chemical symbols of atomic numbers, space-separated (``[8, 12]`` -> ``"O Mg"``)."""
    from ase.data import chemical_symbols

    return " ".join(chemical_symbols[z] for z in numbers)


#: What a card's snippet loads a model without an alias by: its folder (its bare name resolves to no shipped model).
FOLDER_HANDLE = "path/to/this/folder"


def card_handle(aliases: Sequence[str], folder: str | os.PathLike | None = None) -> str:
    """What a card's snippet loads the model by: its first alias, or :data:`FOLDER_HANDLE`.

    With ``folder`` (the model's own folder), an alias is used only where the registry finds this very
    folder by it: an alias inherited from a shipped model's config (a user's retraining of
    ``configs/perovskite_site_energy.yaml``), or given to a folder outside ``pretrained_models/``, would
    load another model or none, so the snippet names the folder then.
    """
    if not aliases:
        return FOLDER_HANDLE
    if folder is None:
        return aliases[0]
    from cgcnn_ase.errors import UnknownModelError
    from cgcnn_ase.models.registry import resolve_model

    for alias in aliases:
        try:
            if Path(resolve_model(alias).path).resolve() == Path(folder).resolve():
                return alias
        except UnknownModelError:
            continue
    return FOLDER_HANDLE

def _nonzero_counts(counts: dict[str, int]) -> str:
    """``{"filter": 3, "limit": 0}`` -> ``"filter: 3"``; ``"none"`` when every count is zero."""
    return ", ".join(f"{k}: {v}" for k, v in counts.items() if v) or "none"


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """The Jinja2 environment of the card templates (block tags on their own lines leave no
    trace; a missing key is an error, not an empty string; Markdown is not HTML-escaped)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cgcnn_ase.models", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(fmt=fmt, pct=pct, symbols=symbols, nonzero_counts=_nonzero_counts, code=_code)
    return env


def render_card(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context`` (the filters ``fmt``, ``pct``, ``symbols``,
    ``nonzero_counts`` and ``code`` are available)."""
    return _environment().get_template(template).render(**context)


def model_card(document: dict[str, Any], *, loss_name: str, folder: str | os.PathLike | None = None) -> str:
    """The ``README.md`` model card of a single trained model folder.

    Args:
        document: the folder's ``model.json`` document, as written by training: its
            ``metadata`` holds ``dataset``, ``split``, ``training`` (with the resolved
            configuration as ``config`` and the ``hardware``), ``test_metrics`` and
            ``elements_seen``; a fine-tuned model's also ``finetune`` (the base model, its
            data and the fine-tuning settings, :func:`cgcnn_ase.train.finetune.finetune_metadata`),
            which adds the card's "Base model" section.
        loss_name: the training loss as used (``mse``, ``mae`` or ``cross_entropy``; the
            configuration may say ``auto``).
        folder: the model's folder, where the card's snippet loads it by an alias only if the
            registry finds this folder by it (:func:`card_handle`); ``None``: by its first alias.
    """
    md = document["metadata"]
    training = md["training"]
    aliases = md.get("aliases") or []
    return render_card(
        "model_card.md.j2",
        doc=document,
        md=md,
        ds=md["dataset"],
        sp=md["split"],
        tr=training,
        test=md.get("test_metrics") or {},
        config=training["config"],
        hw=training["hardware"],
        classification=document["task"] == "classification",
        aliases=aliases,
        handle=card_handle(aliases, folder),
        seen=md.get("elements_seen") or [],
        loss_name=loss_name,
    )


#: Plots an ensemble card lists under "Files" when the folder holds them.
ENSEMBLE_PLOTS = ("parity.png", "roc.png", "error_vs_std.png", "calibration.png")


def ensemble_card(
    document: dict[str, Any], files: Iterable[str] = (), *, folder: str | os.PathLike | None = None
) -> str:
    """The ``README.md`` model card of an ensemble folder.

    Args:
        document: the folder's ``model.json`` document (``format_version`` 2, with an
            ``ensemble`` section; ``metadata.uncertainty`` once the ensemble was measured).
        files: names of the files in the folder (the card lists the plots among them).
        folder: the ensemble's folder (see :func:`card_handle`); ``None``: loaded by its first alias.
    """
    md, ens = document["metadata"], document["ensemble"]
    classification = document["task"] == "classification"
    members = ens["members"]
    test = (md.get("uncertainty") or {}).get("test") or {}
    training = md.get("training") or {}
    files = set(files)
    return render_card(
        "ensemble_card.md.j2",
        doc=document,
        md=md,
        ens=ens,
        members=members,
        n=len(members),
        ds=md.get("dataset") or {},
        sp=md.get("split") or {},
        test=test,
        versus=test.get("ensemble_vs_members") or {},
        raw=test.get("raw") or {},
        cal=test.get("calibrated") or {},
        dom=test.get("domain") or {},
        calibration=ens.get("calibration"),
        classification=classification,
        units=document["units"],
        handle=card_handle(md.get("aliases") or [], folder),
        metric="roc_auc" if classification else "mae",
        metric_label="ROC-AUC" if classification else f"MAE ({document['units']})",
        seen=md.get("elements_seen") or [],
        commands=list(dict.fromkeys(m.get("command") for m in members if m.get("command"))),  # member: all: one
        total_wall_time_s=sum(m.get("wall_time_s") or 0 for m in members),
        last_epoch=bool(members) and all(m.get("select") == "last" for m in members),
        training=training,
        hw=training.get("hardware") or {},
        plots=[name for name in ENSEMBLE_PLOTS if name in files],
    )


def _code(value: object) -> str:
    """Markdown inline code: ``value`` in backticks, in double backticks with spaces when it holds one (round 23b:
    a target ```e_form (eV/atom)` * 1000`` broke the card)."""
    text = str(value)
    return f"`` {text} ``" if "`" in text else f"`{text}`"
