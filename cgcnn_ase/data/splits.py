"""Splits of a dataset into training, validation and test crystals (``split.json``).

:func:`make_split` draws a seeded random split from a list of ids; :class:`Split` holds the
three id lists and reads and writes ``split.json``, the file every trained model folder
carries (and that ensembles, evaluation and resumed runs reuse).

>>> split = make_split([f"mp-{k}" for k in range(10)], (0.8, 0.1, 0.1), seed=0)
>>> split.sizes
{'train': 8, 'val': 1, 'test': 1}
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cgcnn_ase.errors import DatasetError

__all__ = ["SPLIT_NAMES", "Split", "make_split"]

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Split:
    """Ids of the training, validation and test crystals.

    Attributes:
        train, val, test: ids (strings), disjoint.
        seed: seed of the random permutation (``None`` for a split read from elsewhere).
        fractions: requested (train, val, test) fractions.
    """

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int | None = None
    fractions: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        self.train, self.val, self.test = ([str(i) for i in part] for part in (self.train, self.val, self.test))
        seen: set[str] = set()
        for name in SPLIT_NAMES:
            part = set(getattr(self, name))
            overlap = part & seen
            if overlap or len(part) != len(getattr(self, name)):
                raise DatasetError(
                    f"split: {name} repeats or shares ids with another part (e.g. {sorted(overlap)[:3]})"
                )
            seen |= part

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLIT_NAMES}

    def ids(self, name: str) -> list[str]:
        """The ids of part ``name`` (``train``, ``val`` or ``test``)."""
        if name not in SPLIT_NAMES:
            raise DatasetError(f"unknown split {name!r}; choose train, val or test")
        return list(getattr(self, name))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "cgcnn_ase.split/1",
            "seed": self.seed,
            "fractions": list(self.fractions) if self.fractions is not None else None,
            "sizes": self.sizes,
            "train": self.train,
            "val": self.val,
            "test": self.test,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``split.json`` (compact: one id list per part)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Split:
        """Read a ``split.json`` written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(
                train=data["train"],
                val=data["val"],
                test=data["test"],
                seed=data.get("seed"),
                fractions=tuple(data["fractions"]) if data.get("fractions") else None,
            )
        except FileNotFoundError:
            raise DatasetError(f"{path}: no such split file") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: not a split file ({type(exc).__name__}: {exc})") from None


def make_split(ids: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> Split:
    """A seeded random split of ``ids``.

    ``val`` and ``test`` get ``round(fraction * n)`` crystals; ``train`` gets the rest, or
    ``round(train * n)`` when the fractions sum to less than one (the remainder is unused).
    The result depends only on ``len(ids)``, the order of ``ids``, ``fractions`` and ``seed``.
    """
    train_f, val_f, test_f = (float(f) for f in fractions)
    if min(train_f, val_f, test_f) < 0 or train_f + val_f + test_f > 1 + 1e-9 or train_f <= 0:
        raise DatasetError(
            f"split fractions must be non-negative, train > 0, and sum to at most 1; got {tuple(fractions)}"
        )
    n = len(ids)
    n_val, n_test = int(round(val_f * n)), int(round(test_f * n))
    n_train = (
        n - n_val - n_test if train_f + val_f + test_f > 1 - 1e-9 else min(int(round(train_f * n)), n - n_val - n_test)
    )
    if n_train < 1:
        raise DatasetError(f"split: {n} crystals leave no training data with fractions {tuple(fractions)}")
    order = np.random.default_rng(seed).permutation(n)
    ids = [str(i) for i in ids]
    return Split(
        train=[ids[i] for i in order[:n_train]],
        val=[ids[i] for i in order[n_train : n_train + n_val]],
        test=[ids[i] for i in order[n_train + n_val : n_train + n_val + n_test]],
        seed=seed,
        fractions=(train_f, val_f, test_f),
    )


def label_digest(ids: Sequence[str], targets: Sequence[float]) -> str:
    """A short digest of ``(id, target)`` pairs, independent of their order (targets rounded to 8
    significant digits, so that the same file read twice agrees): recorded per split part in a
    trained model's ``model.json``, so that an evaluation can tell that labels changed since."""
    import hashlib

    pairs = sorted(zip((str(i) for i in ids), (float(f"{float(t):.8g}") for t in targets)))
    return hashlib.blake2b(json.dumps(pairs).encode(), digest_size=8).hexdigest()



def twins_across_split(groups: Sequence[Sequence[str]], split: Split) -> dict[str, Any]:
    """How the groups of ids holding one crystal (:func:`~cgcnn_ase.train.data.copies_of_crystals`) fall
    across ``split``: ``{"groups", "rows", "val_in_train", "test_in_train", "examples"}``, the validation and
    test crystals counted when the same structure is also in the training split (their errors are then those of
    a crystal the model trained on: round 23b found 49 of 60 test crystals so), ``examples`` up to three groups
    that cross it."""
    part_of = {i: name for name in SPLIT_NAMES for i in getattr(split, name)}
    counts = {"val": 0, "test": 0}
    examples: list[list[str]] = []
    for ids in groups:
        parts = [part_of.get(i) for i in ids]
        if "train" not in parts:
            continue
        for name in ("val", "test"):
            counts[name] += parts.count(name)
        if ("val" in parts or "test" in parts) and len(examples) < 3:
            examples.append(list(ids[:3]))
    return {"groups": len(groups), "rows": sum(len(ids) for ids in groups), "val_in_train": counts["val"],
            "test_in_train": counts["test"], "examples": examples}  # fmt: skip


def twins_warning(twins: dict[str, Any], split: Split) -> str | None:
    """The warning for validation and test crystals whose structure is also in the training split
    (:func:`twins_across_split`), or ``None``."""
    if not (twins["val_in_train"] or twins["test_in_train"]):
        return None
    shown = "; ".join(" = ".join(repr(i) for i in ids) for ids in twins["examples"])
    return (f"{twins['groups']} crystal(s) appear under more than one id ({twins['rows']} rows, e.g. {shown}; one "
            "structure to 0.1%, however the file writes it): "
            f"{twins['test_in_train']} of the {len(split.test)} test and {twins['val_in_train']} of the "
            f"{len(split.val)} validation crystals have the same crystal in the training split, so their errors "
            "understate those on new crystals. Leave the copies out (data.drop_ids) or give a split.file that keeps "
            "each crystal's rows in one part")
