"""The published tables (REFERENCE.md) as data: layout, the runs behind every cell, and the published numbers.

A table has blocks (e.g. one per model), rows (methods) and columns (rho, or a metric); a cell is filled by
the finished runs that match the block's, the row's and the column's selectors. A selector maps a key to
a value: a Hydra config-group choice (`optimizer`, `model`, `data`, `arm`), or a config key (`rho`,
`optimizer.lmbda`, `data.augment.cutout`). `scripts/make_tables.py` and the tests read these specs; the
experiment configs in `conf/experiment/` produce the runs.

Naming note (DESIGN.md section 4): the empirical SAM study's code had `samdirection` and `sammagnitude`
swapped relative to its own text. Its published SAMDIRECTION row was produced by |g_s| * sign(g), which is
our `sammagnitude`; its SAMMAGNITUDE row by sign(g_s) * |g|, our `samdirection`. `EMPIRICAL_SAM_ROWS` below
is that mapping; the rendered row labels name both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The sharpness value the empirical SAM tables compare with: the study's per-batch protocol (40 batches of
# 128), maximum over the batches. `make_tables.py --sharpness-key` picks another (per_batch_mean, lambda_max).
SHARPNESS_KEY = "sharpness/per_batch_max"


@dataclass(frozen=True)
class Metric:
    """How a cell's number is read from one run and shown.

    `key` is a summary.json key; with `best_epoch` it is a metrics.jsonl key maximised over epochs (the
    "best test accuracy" of authors' logs). `unit`: "acc%" shows 100 x, "err%" 100 (1 - x), "raw" x.
    """

    key: str
    unit: str = "acc%"
    best_epoch: bool = False

    def __post_init__(self) -> None:
        if self.unit not in ("acc%", "err%", "raw"):
            raise ValueError(f"Metric.unit must be acc%, err% or raw, got {self.unit!r}")

    def show(self, value: float) -> float:
        return {"acc%": 100.0 * value, "err%": 100.0 * (1.0 - value), "raw": value}[self.unit]

    def describe(self) -> str:
        what = f"max over epochs of {self.key}" if self.best_epoch else self.key
        return {"acc%": f"100 x {what}", "err%": f"100 x (1 - {what})", "raw": what}[self.unit]


@dataclass(frozen=True)
class Part:
    """A block, row or column: its label as published, and which runs it takes."""

    label: str
    select: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""  # shown after the label, e.g. which of our configs produced a published row
    metric: Metric | None = None  # columns only: a different metric than the table's

    def title(self) -> str:
        return f"{self.label} [{self.note}]" if self.note else self.label


@dataclass(frozen=True)
class TableSpec:
    name: str  # e.g. "A-accuracy"; `make_tables.py --table` takes it, or its letter
    letter: str  # A, B, C or D: the section of REFERENCE.md
    title: str
    experiments: tuple[str, ...]  # experiment configs whose runs fill it (auto mode)
    metric: Metric
    blocks: tuple[Part, ...]
    rows: tuple[Part, ...]
    columns: tuple[Part, ...]
    published: Mapping[tuple[str, str, str], float | None]  # (block, row, column) -> value; None = "??"
    notes: tuple[str, ...] = ()

    def cell_metric(self, column: Part) -> Metric:
        return column.metric or self.metric

    def published_value(self, block: Part, row: Part, column: Part) -> float | None:
        return self.published.get((block.label, row.label, column.label))

    def with_sharpness_key(self, key: str) -> TableSpec:
        """The same table reading sharpness from `key` instead of SHARPNESS_KEY."""

        def swap(m: Metric | None) -> Metric | None:
            return dataclasses.replace(m, key=key) if m and m.key.startswith("sharpness/") else m

        columns = tuple(dataclasses.replace(c, metric=swap(c.metric)) for c in self.columns)
        return dataclasses.replace(self, metric=swap(self.metric), columns=columns)


def _grid(
    blocks: Sequence[Part], rows: Sequence[Part], columns: Sequence[Part], values: Mapping[str, Any]
) -> dict[tuple[str, str, str], float | None]:
    """{block label: {row label: (value per column)}} -> {(block, row, column): value}."""
    out: dict[tuple[str, str, str], float | None] = {}
    for b in blocks:
        for r in rows:
            row_values = values[b.label][r.label]
            if len(row_values) != len(columns):
                raise ValueError(f"{b.label}/{r.label}: {len(row_values)} values for {len(columns)} columns")
            for c, v in zip(columns, row_values):
                out[(b.label, r.label, c.label)] = v
    return out


ACC = Metric("best_val/test_acc", "acc%")
SHARPNESS = Metric(SHARPNESS_KEY, "raw")
RHO_COLUMNS = tuple(Part(f"rho={r}", {"rho": r}) for r in (0.1, 0.2, 0.4))
NA = None  # a cell the source itself left empty ("??" in REFERENCE.md)

# Published row -> the definition that produced it (see the naming note at the top).
EMPIRICAL_SAM_ROWS = (
    Part("SAM", {"optimizer": "sam"}),
    Part("SAMDIRECTION", {"optimizer": "sammagnitude"}, note="ours: sammagnitude, abs(g_s) * sign(g)"),
    Part("SAMMAGNITUDE", {"optimizer": "samdirection"}, note="ours: samdirection, sign(g_s) * abs(g)"),
)
_MAPPING_NOTE = (
    "Published SAMDIRECTION = our `sammagnitude` (abs(g_s) * sign(g)); published SAMMAGNITUDE = our "
    "`samdirection` (sign(g_s) * abs(g)): the study's code swapped the names (DESIGN.md section 4)."
)
_CIFAR100_MODELS = tuple(
    Part(label, {"model": model, "data": "cifar100"})
    for label, model in (
        ("ResNet-18", "resnet18"),
        ("ResNet-34", "resnet34"),
        ("ResNet-50", "resnet50"),
        ("WRN-28-10", "wrn28_10"),
    )
)
_RESNET18_C100 = (_CIFAR100_MODELS[0],)

A_ACCURACY = TableSpec(
    name="A-accuracy",
    letter="A",
    title="Empirical SAM study, CIFAR-100: test accuracy (%) of the best-val checkpoint",
    experiments=("empirical_sam_accuracy",),
    metric=ACC,
    blocks=_CIFAR100_MODELS,
    rows=EMPIRICAL_SAM_ROWS,
    columns=RHO_COLUMNS,
    published=_grid(
        _CIFAR100_MODELS,
        EMPIRICAL_SAM_ROWS,
        RHO_COLUMNS,
        {
            "ResNet-18": {
                "SAM": (79.24, 79.54, 79.44),
                "SAMDIRECTION": (77.89, 78.52, 78.22),
                "SAMMAGNITUDE": (78.73, 79.23, 77.94),
            },
            "ResNet-34": {
                "SAM": (NA, 80.95, 80.89),
                "SAMDIRECTION": (79.35, 80.02, 76.38),
                "SAMMAGNITUDE": (80.08, 79.71, 72.74),
            },
            "ResNet-50": {
                "SAM": (NA, 81.24, NA),
                "SAMDIRECTION": (NA, NA, 80.34),
                "SAMMAGNITUDE": (NA, NA, NA),
            },
            "WRN-28-10": {
                "SAM": (83.50, 83.91, 83.44),
                "SAMDIRECTION": (82.44, 82.54, 82.11),
                "SAMMAGNITUDE": (82.47, 80.63, 79.36),
            },
        },
    ),
    notes=(_MAPPING_NOTE,),
)

A_SHARPNESS = TableSpec(
    name="A-sharpness",
    letter="A",
    title="Empirical SAM study, ResNet-18 on CIFAR-100: sharpness (top Hessian eigenvalue), end of training",
    experiments=("empirical_sam_sharpness", "empirical_sam_accuracy"),
    metric=SHARPNESS,
    blocks=_RESNET18_C100,
    rows=EMPIRICAL_SAM_ROWS,
    columns=RHO_COLUMNS,
    published=_grid(
        _RESNET18_C100,
        EMPIRICAL_SAM_ROWS,
        RHO_COLUMNS,
        {
            "ResNet-18": {
                "SAM": (71.04, 56.53, 52.23),
                "SAMDIRECTION": (259.27, 3737.54, 1254.17),
                "SAMMAGNITUDE": (93.54, 114.01, 373.49),
            }
        },
    ),
    notes=(_MAPPING_NOTE, "The ResNet-18 jobs of empirical_sam_accuracy fill this table too."),
)

_SGDHESS_ROWS = (
    Part("SGD", {"optimizer": "sgd"}),
    *(Part(f"SGDHESS rho={r}", {"optimizer": "sgdhess", "rho": r}) for r in (0.05, 1, 2)),
)
_SGDHESS_COLUMNS = (Part("accuracy", metric=ACC), Part("sharpness", metric=SHARPNESS))
A_SGDHESS = TableSpec(
    name="A-sgdhess",
    letter="A",
    title="Empirical SAM study, ResNet-18 on CIFAR-100: SGD vs SGDHESS, accuracy (%) and sharpness",
    experiments=("empirical_sam_sgdhess",),
    metric=ACC,
    blocks=_RESNET18_C100,
    rows=_SGDHESS_ROWS,
    columns=_SGDHESS_COLUMNS,
    published=_grid(
        _RESNET18_C100,
        _SGDHESS_ROWS,
        _SGDHESS_COLUMNS,
        {
            "ResNet-18": {
                "SGD": (77.36, 207.06),
                "SGDHESS rho=0.05": (77.27, 192.45),
                "SGDHESS rho=1": (76.75, 151.62),
                "SGDHESS rho=2": (75.96, 138.62),
            }
        },
    ),
)

_FSAM_BLOCKS = (Part("ResNet-18", {"model": "resnet18", "data": "cifar100"}),)
_FSAM_ROWS = (
    Part("SAM", {"optimizer": "sam"}),
    *(Part(f"F-SAM lambda={lm}", {"optimizer": "fsam", "optimizer.lmbda": lm}) for lm in (0.6, 0.95)),
)
_FSAM_COLUMNS = (
    Part("final", metric=Metric("test/acc", "acc%")),
    Part("best", metric=Metric("test/acc", "acc%", best_epoch=True)),
)
B_FSAM = TableSpec(
    name="B",
    letter="B",
    title="Friendly SAM, ResNet-18 on CIFAR-100 (rho 0.2, sigma 1): final and best test accuracy (%)",
    experiments=("friendly_sam",),
    metric=Metric("test/acc", "acc%"),
    blocks=_FSAM_BLOCKS,
    rows=_FSAM_ROWS,
    columns=_FSAM_COLUMNS,
    published=_grid(
        _FSAM_BLOCKS,
        _FSAM_ROWS,
        _FSAM_COLUMNS,
        {
            "ResNet-18": {
                "SAM": (80.78, 80.88),
                "F-SAM lambda=0.6": (81.19, 81.38),
                "F-SAM lambda=0.95": (81.32, 81.43),
            }
        },
    ),
    notes=("best = the highest test accuracy over epochs, as in the authors' logs (no val split).",),
)

_SAM_PAPER_BLOCKS = (
    Part("CIFAR-10 (SAM rho 0.05)", {"model": "wrn28_10", "data": "cifar10"}),
    Part("CIFAR-100 (SAM rho 0.1)", {"model": "wrn28_10", "data": "cifar100"}),
)
_SAM_SGD_ROWS = (Part("SAM", {"optimizer": "sam"}), Part("SGD", {"optimizer": "sgd"}))
_AUGMENT_COLUMNS = (
    Part("basic", {"data.augment.cutout": 0}, note="crop + flip"),
    Part("cutout", {"data.augment.cutout": 16}, note="crop + flip + cutout 16"),
)
C_SAM_PAPER = TableSpec(
    name="C",
    letter="C",
    title="SAM paper, WRN-28-10, 200 epochs: test error (%) of the final model",
    experiments=("sam_paper_wrn28_10",),
    metric=Metric("test/acc", "err%"),
    blocks=_SAM_PAPER_BLOCKS,
    rows=_SAM_SGD_ROWS,
    columns=_AUGMENT_COLUMNS,
    published=_grid(
        _SAM_PAPER_BLOCKS,
        _SAM_SGD_ROWS,
        _AUGMENT_COLUMNS,
        {
            "CIFAR-10 (SAM rho 0.05)": {"SAM": (2.7, 2.3), "SGD": (3.5, 2.6)},
            "CIFAR-100 (SAM rho 0.1)": {"SAM": (16.5, 14.9), "SGD": (18.8, 16.9)},
        },
    ),
)

_REF_BLOCKS = (Part("WRN-16-8, CIFAR-10", {"model": "wrn16_8", "data": "cifar10"}),)
_REF_ROWS = (
    Part("SGD", {"optimizer": "sgd"}),
    Part("SAM rho=0.05", {"optimizer": "sam", "rho": 0.05}),
    Part("ASAM rho=2.0", {"optimizer": "asam", "rho": 2.0}),
)
_REF_COLUMNS = (Part("test error %"),)
D_REFERENCE = TableSpec(
    name="D",
    letter="D",
    title="Reference PyTorch SAM implementation, WRN-16-8 on CIFAR-10, 200 epochs: test error (%)",
    experiments=("sam_reference_wrn16_8",),
    metric=Metric("test/acc", "err%"),
    blocks=_REF_BLOCKS,
    rows=_REF_ROWS,
    columns=_REF_COLUMNS,
    published=_grid(
        _REF_BLOCKS,
        _REF_ROWS,
        _REF_COLUMNS,
        {"WRN-16-8, CIFAR-10": {"SGD": (3.20,), "SAM rho=0.05": (2.86,), "ASAM rho=2.0": (2.55,)}},
    ),
)

TABLES: tuple[TableSpec, ...] = (A_ACCURACY, A_SHARPNESS, A_SGDHESS, B_FSAM, C_SAM_PAPER, D_REFERENCE)


def tables_named(name: str) -> list[TableSpec]:
    """`A` -> the three A tables; `A-sharpness` -> that one. Case-insensitive."""
    found = [t for t in TABLES if name.lower() in (t.letter.lower(), t.name.lower())]
    if not found:
        allowed = sorted({t.letter for t in TABLES} | {t.name for t in TABLES})
        raise KeyError(f"unknown table {name!r}; known: {', '.join(allowed)}")
    return found


def tables_for_experiment(experiment: str) -> list[TableSpec]:
    return [t for t in TABLES if experiment in t.experiments]
