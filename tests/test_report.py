"""Reporting (sam_lab/report/): published tables as data, make_tables.py and plot_runs.py on hand-made run
directories (.hydra/ + summary.json + metrics.jsonl; no training).

- published.yaml loads into the cells and numbers the tables always had, and docs/published.md is its text;
- a run is compared with a published number only when it follows the published recipe;
- single-pass optimizers (no rho in their optimizer config) are one value, not one per rho, in tables and
  plots.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sam_lab.report import published
from sam_lab.report.render import published_markdown
from tests.conftest import CONF, ROOT

_CHOICES = ("data", "model", "optimizer", "scheduler", "experiment", "arm")


def run_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tables_text(argv: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_script("make_tables").main(argv) == 0
    return buf.getvalue()


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table line, the row label first."""
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def _row(text: str, start: str) -> list[str]:
    return _cells(next(line for line in text.splitlines() if line.startswith(start)))


def recipe(table: str, block: int = 0) -> dict:
    """The published recipe of a table's block, with what every row adds (test runs that follow it)."""
    spec = next(t for t in published.tables() if t.name == table)
    out = {**spec.recipe, **spec.blocks[block].recipe}
    for r in spec.rows:
        out.update(r.recipe)
    return out


def runs_dir(tmp_path: Path, spec: list[tuple[dict, dict | None, list[dict]]], name: str = "sweep") -> Path:
    """Hand-made job dirs: (hydra choices + config values, summary or None, metrics.jsonl records).

    A run's optimizer node gets `rho` (as Hydra's resolved config does for SAM-family optimizers) unless the
    values say `optimizer.rho: None`, i.e. a single-pass optimizer."""
    sweep = tmp_path / name
    for i, (values, summary, history) in enumerate(spec):
        job = sweep / f"{i}_job"
        (job / ".hydra").mkdir(parents=True)
        choices = {k: v for k, v in values.items() if k in _CHOICES}
        config = OmegaConf.create({})
        for k, v in values.items():
            if k not in choices and not (k == "optimizer.rho" and v is None):
                OmegaConf.update(config, k, v, force_add=True)
        if "optimizer.rho" not in values and "rho" in values:
            OmegaConf.update(config, "optimizer.rho", values["rho"], force_add=True)
        OmegaConf.save(
            OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), job / ".hydra/hydra.yaml"
        )
        OmegaConf.save(config, job / ".hydra/config.yaml")
        OmegaConf.save(OmegaConf.create([f"{k}={v}" for k, v in values.items() if k in ("optimizer", "rho")]),
                       job / ".hydra/overrides.yaml")  # fmt: skip
        if summary is not None:
            (job / "summary.json").write_text(json.dumps(summary))
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return sweep


# ---- the published tables as data ------------------------------------------------------------------------
def test_published_yaml_holds_the_numbers_the_python_specs_had():
    """Cell count, filled cells and their sum per table, taken from the former Python specs when they were
    moved to published.yaml, plus a few cells by hand."""
    fingerprint = {}
    for t in published.tables():
        values = list(t.published.values())
        fingerprint[t.name] = (
            len(values),
            sum(v is not None for v in values),
            round(sum(v or 0 for v in values), 2),
        )
    assert fingerprint == {
        "A-accuracy": (36, 28, 2240.85),
        "A-sharpness": (9, 9, 6011.82),
        "A-sgdhess": (8, 8, 997.09),
        "B": (6, 6, 486.98),
        "C": (8, 8, 78.2),
        "D": (3, 3, 8.61),
    }
    pub = {t.name: t.published for t in published.tables()}
    assert pub["A-accuracy"][("ResNet-34", "SAM", "rho=0.1")] is None
    assert pub["A-sharpness"][("ResNet-18", "SAMDIRECTION", "rho=0.2")] == 3737.54
    assert pub["C"][("CIFAR-100 (SAM rho 0.1)", "SGD", "cutout")] == 16.9
    assert pub["D"][("WRN-16-8, CIFAR-10", "SGD", "test error %")] == 3.20
    assert published.load().sharpness_key == "sharpness/per_batch_max"
    assert {t.letter for t in published.tables()} == {"A", "B", "C", "D"}
    assert [s.letter for s in published.load().sections] == list("ABCDEF")


def test_published_yaml_is_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "published.yaml" in project["tool"]["setuptools"]["package-data"]["sam_lab.report"]


def test_published_rows_map_to_the_definitions_that_produced_them():
    """The naming note: published SAMDIRECTION = our sammagnitude and vice versa."""
    a_acc, a_sharp = published.tables_named("A-accuracy")[0], published.tables_named("A-sharpness")[0]
    rows = {r.label: r.select["optimizer"] for r in a_acc.rows}
    assert rows == {"SAM": "sam", "SAMDIRECTION": "sammagnitude", "SAMMAGNITUDE": "samdirection"}
    assert a_sharp.rows == a_acc.rows
    text = (CONF / "experiment" / "empirical_sam_accuracy.yaml").read_text()
    assert "SAMDIRECTION row was produced by |g_s| * sign(g) = OUR `sammagnitude`" in " ".join(text.split())
    doc = " ".join((ROOT / "docs" / "published.md").read_text().split())
    assert (
        "SAMDIRECTION row was produced by |g_s| * sign(g) (SGD's direction, SAM's magnitude), which is our "
        "`sammagnitude`" in doc
    )


def test_docs_published_md_is_generated_from_published_yaml():
    """docs/published.md == `python scripts/make_tables.py --published`: regenerate it after a YAML edit."""
    assert (ROOT / "docs" / "published.md").read_text() == published_markdown()
    assert make_tables_text(["--published"]) == published_markdown()


# ---- make_tables ---------------------------------------------------------------------------------------
def test_make_tables_cells_published_values_and_unfinished_runs(tmp_path):
    base = {
        "experiment": "empirical_sam_accuracy",
        "data": "cifar100",
        "model": "resnet18",
        **recipe("A-accuracy"),
    }
    spec = [
        # three seeds of SAM rho 0.1: 79, 80, 81 -> 80.00 ± 1.00 (n=3), published 79.24, delta +0.76
        *(
            (
                {**base, "optimizer": "sam", "rho": 0.1, "seed": s},
                {"status": "finished", "best_val/test_acc": acc, "rho": 0.1, "seed": s},
                [],
            )
            for s, acc in enumerate((0.79, 0.80, 0.81))
        ),
        # our sammagnitude is the published SAMDIRECTION row
        (
            {**base, "optimizer": "sammagnitude", "rho": 0.2, "seed": 0},
            {"status": "finished", "best_val/test_acc": 0.5},
            [],
        ),
        # a job that died in epoch 38, and one that diverged
        (
            {**base, "optimizer": "samdirection", "rho": 0.4, "seed": 0},
            None,
            [{"epoch": e} for e in range(1, 38)],
        ),
        ({**base, "optimizer": "sam", "rho": 0.4, "seed": 0}, {"status": "diverged"}, [{"epoch": 1}]),
    ]
    sweep = runs_dir(tmp_path, spec)
    out_csv = tmp_path / "t.csv"
    text = make_tables_text([str(sweep), "--csv", str(out_csv)])
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert header == "| method | rho=0.1 | pub | Δ | rho=0.2 | pub | Δ | rho=0.4 | pub | Δ |"
    block = lines[lines.index("**ResNet-18**") :]
    sam = next(line for line in block if line.startswith("| SAM |"))
    assert _cells(sam)[1:4] == ["80.00 ± 1.00 (n=3)", "79.24", "+0.76"]  # recipe followed: difference shown
    assert _cells(sam)[7:] == ["— [1 not finished]", "79.44", ""]
    direction = next(line for line in block if line.startswith("| SAMDIRECTION [ours: sammagnitude"))
    assert _cells(direction)[1:7] == ["—", "77.89", "", "50.00", "78.52", "-28.52"]
    r50 = lines[lines.index("**ResNet-50**") :]
    assert _cells(next(line for line in r50 if line.startswith("| SAM |")))[1:4] == ["—", "??", ""]
    assert not [line for line in lines if line.startswith("|") and "recipe:" in line]  # all on the recipe
    assert "Runs not finished (2 of 6):" in text
    assert "no summary.json (failed, killed or still running; 37/200 epochs in metrics.jsonl)" in text
    assert "status='diverged'" in text
    csv_lines = out_csv.read_text().splitlines()
    assert len(csv_lines) == 1 + 36 + 9  # these runs also fill the sharpness table (ResNet-18)
    assert any(
        line.startswith("A-accuracy,ResNet-18,SAM,rho=0.1,") and ",3,80.0000,1.0000,79.24,0.7600,," in line
        for line in csv_lines
    )


def test_a_run_off_the_published_recipe_shows_no_difference(tmp_path):
    """A 1-epoch width-2 run of table D: its value, marked with the differing recipe keys, no Δ."""
    ref = {
        "experiment": "sam_reference_wrn16_8",
        "data": "cifar10",
        "model": "wrn16_8",
        **recipe("D"),
    }
    sweep = runs_dir(
        tmp_path,
        [
            (
                {**ref, "optimizer": "sgd", "optimizer.rho": None, "epochs": 1, "model.width": 2},
                {"status": "finished", "test/acc": 0.0909},
                [],
            ),  # fmt: skip
            ({**ref, "optimizer": "asam", "rho": 2.0}, {"status": "finished", "test/acc": 0.97}, []),
        ],
    )
    out_csv = tmp_path / "t.csv"
    text = make_tables_text([str(sweep), "--csv", str(out_csv)])
    assert _row(text, "| SGD |")[1:] == ["90.91 (recipe: epochs=1≠200, model.width=2≠16)", "3.20", ""]
    assert _row(text, "| ASAM rho=2.0 |")[1:] == ["3.00", "2.55", "+0.45"]  # this one follows the recipe
    sgd_csv = next(line for line in out_csv.read_text().splitlines() if ",SGD," in line)
    assert ",3.2,,epochs=1≠200, model.width=2≠16," in sgd_csv.replace('"', "")


def test_make_tables_best_epoch_and_error_metrics(tmp_path):
    """Table B's "best" is the max over epochs of test/acc; table D shows test error."""
    fsam = {"experiment": "friendly_sam", "data": "cifar100", "model": "resnet18", **recipe("B")}
    fsam |= {"optimizer": "fsam", "rho": 0.2}
    hist = [{"epoch": 1, "test/acc": 0.70}, {"epoch": 2, "test/acc": 0.815}, {"epoch": 3, "test/acc": 0.81}]
    ref = {"experiment": "sam_reference_wrn16_8", "data": "cifar10", "model": "wrn16_8", **recipe("D")}
    ref |= {"optimizer": "asam", "rho": 2.0}
    sweep = runs_dir(
        tmp_path,
        [
            ({**fsam, "optimizer.lmbda": 0.6}, {"status": "finished", "test/acc": 0.81}, hist),
            (ref, {"status": "finished", "test/acc": 0.97}, []),
        ],
    )
    text = make_tables_text([str(sweep)])
    assert _row(text, "| F-SAM lambda=0.6 |")[1:] == ["81.00", "81.19", "-0.19", "81.50", "81.38", "+0.12"]
    assert _row(text, "| ASAM rho=2.0 |")[1:] == ["3.00", "2.55", "+0.45"]
    assert "All 2 runs finished." in text


def _rho_sweep(tmp_path: Path) -> Path:
    """`optimizer=sgd,sam rho=0.05,0.1`, two seeds each; plus `mysgd`, a single-pass optimizer by its config
    (no rho in it) under a name no list knows."""
    spec = []
    for seed in (0, 1):
        for rho in (0.05, 0.1):
            common = {"data": "digits", "model": "resnet18", "rho": rho, "seed": seed, "epochs": 3}
            summary = {"status": "finished", "rho": rho, "seed": seed, "sharpness/lambda_max": 100.0 + seed}
            single = {**common, "optimizer.rho": None, "optimizer.momentum": 0.9}
            epoch = [{"epoch": 1, "test/acc": 0.5}]
            spec += [
                ({**single, "optimizer": "sgd"}, {**summary, "best_val/test_acc": 0.70 + 0.02 * seed}, epoch),
                ({**single, "optimizer": "mysgd"}, {**summary, "best_val/test_acc": 0.60}, epoch),
                ({**common, "optimizer": "sam"}, {**summary, "best_val/test_acc": 0.80 + rho}, epoch),
            ]
    return runs_dir(tmp_path, spec)


def test_single_pass_optimizers_are_one_value_not_one_per_rho(tmp_path):
    text = make_tables_text([str(_rho_sweep(tmp_path)), "--table", "generic"])
    assert next(line for line in text.splitlines() if line.startswith("| method")) == (
        "| method | no rho | rho=0.05 | rho=0.1 |"
    )
    # sgd at rho 0.05 and 0.1 with the same seed is the same run: 2 seeds, not 4 runs or 2 columns
    assert _row(text, "| sgd (no rho) |")[1:] == ["71.00 ± 1.41 (n=2)", "", ""]
    assert _row(text, "| mysgd (no rho) |")[1:] == ["60.00 ± 0.00 (n=2)", "", ""]
    assert _row(text, "| sam |")[1:] == ["", "85.00 ± 0.00 (n=2)", "90.00 ± 0.00 (n=2)"]
    assert "repeated seeds" not in text


def test_vs_rho_plot_marks_the_rho_values_and_draws_single_pass_as_a_reference(tmp_path):
    import matplotlib.pyplot as plt

    from sam_lab.report import plots
    from sam_lab.report.runs import find_runs

    runs = find_runs([_rho_sweep(tmp_path)])
    fig, ax = plt.subplots()
    assert plots._vs_rho_panel(ax, runs, "best_val/test_acc", 100.0)
    assert list(ax.get_xticks()) == [0.05, 0.1]  # ticks at exactly the rho values run
    assert not ax.xaxis.get_minorticklocs().size
    labels = [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]
    assert "sgd (no rho), n=2" in labels and "mysgd (no rho), n=2" in labels
    sgd = next(line for line in ax.lines if line.get_label() == "sgd (no rho), n=2")
    assert list(sgd.get_ydata()) == [pytest.approx(71.0)] * 2  # horizontal, the mean over seeds
    sam = next(c for c in ax.containers if c.get_label().startswith("sam"))
    assert sam.lines[0].get_marker() == "o"
    assert any(t.get_text() == "sgd (no rho)" for t in ax.texts)  # labelled on the line itself
    plt.close(fig)
    assert plots.describe_runs(runs) == "digits · resnet18 (width ?) · 3 epochs"
    groups = plots.group_runs(runs)
    assert sorted(groups) == ["mysgd (no rho)", "sam rho=0.05", "sam rho=0.1", "sgd (no rho)"]
    assert len(groups["sgd (no rho)"]) == 2  # one run per seed


def test_plot_runs_writes_three_pngs(tmp_path):
    out = tmp_path / "plots"
    assert run_script("plot_runs").main([str(_rho_sweep(tmp_path)), "--out", str(out)]) == 0
    for name in ("curves.png", "ratio_gt1.png", "vs_rho.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_scripts_refuse_a_missing_or_empty_sweep_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for script in ("make_tables", "plot_runs"):
        assert run_script(script).main([str(tmp_path / "nope")]) == 2
        assert "no such sweep directory" in capsys.readouterr().err
        assert run_script(script).main([str(tmp_path / "empty")]) == 2
        assert "no runs (directories with .hydra/)" in capsys.readouterr().err
