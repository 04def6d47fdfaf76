"""Every command that README.md, docs/*.md (fenced code blocks) and the Makefile show still parses.

`python -m sam_lab.train` / `sam-train`: the overrides compose with Hydra's compose API into a config that
passes `validate` and resolves (hydra.* overrides and launcher choices included; each value of a sweep is
composed once). `python -m sam_lab.evaluate`: its arguments parse and its overrides apply to a run's config.
`python -m sam_lab.bench`, `python scripts/*.py`: the argument parser accepts the arguments. Placeholders are
filled in: `<experiment>` with every conf/experiment option, other `<...>` with a path, `[optional]` parts
kept (dropped when they say `...`), shell variables and `$(...)` with a number.
"""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path
from unittest import mock

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from sam_lab import evaluate
from sam_lab.config import validate
from tests.conftest import CONF, ROOT

pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/submitit_(local|slurm)' is validated")

COMMAND = re.compile(
    r"(?:python -m sam_lab\.(?P<module>\w+)|python (?P<script>scripts/\w+\.py)"
    r"|(?P<exe>sam-train|sam-evaluate))(?P<args>[^\n;|&)`]*)"
)
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _blocks(path: Path) -> list[tuple[int, str]]:
    """(first line number, text) of each fenced code block; the Makefile's recipes as one block."""
    text = path.read_text()
    if path.name == "Makefile":
        return [(1, text.replace("$(PY)", "python").replace("\\\n\t", " "))]
    return [
        (text[: m.start()].count("\n") + 2, m.group(1))
        for m in re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    ]


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, program, argument lists) of every documented command: one list per placeholder value."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "Makefile"]:
        for first, block in _blocks(path):
            block = block.replace("\\\n", " ")
            block = "\n".join(re.sub(r"(^|\s)#.*", "", line) for line in block.splitlines())  # comments
            block = re.sub(r"\$\((?!\s*(?:python|sam-))[^)]*\)", "2", block)  # $(nproc) and the like
            block = re.sub(r"\$\{?\w+\}?", "2", block)  # $J, ${G}
            for m in COMMAND.finditer(block):
                line = first + block[: m.start()].count("\n")
                program = m.group("module") or m.group("script") or m.group("exe")
                program = {"sam-train": "train", "sam-evaluate": "evaluate"}.get(program, program)
                args = re.sub(r"\[([^\[\]]*)\]", lambda b: "" if "..." in b[1] else b[1], m["args"])
                values = EXPERIMENTS if "<experiment>" in args else [None]
                argvs = []
                for v in values:
                    a = args.replace("<experiment>", v) if v else args
                    a = re.sub(r"<[^<>]+>", "outputs/runs/PLACEHOLDER", a)
                    argvs.append([t for t in shlex.split(a) if t != "..."])
                found.append((f"{path.relative_to(ROOT)}:{line}", program, argvs))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_every_kind():
    programs = {program for _, program, _ in COMMANDS}
    assert {"train", "evaluate", "scripts/make_tables.py", "scripts/plot_runs.py"} <= programs, programs


class Parsed(Exception):
    """Raised in place of running the program once its arguments have parsed."""


def parses(main, argv: list[str], prog: str) -> argparse.Namespace | None:
    """Run `main` with `argv` until its argparse parser returns; None for --help (which exits 0)."""
    plain, intermixed = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_intermixed_args

    def parse_args(self, args=None, namespace=None):
        raise Parsed(plain(self, args, namespace))

    def parse_intermixed_args(self, args=None, namespace=None):
        raise Parsed(intermixed(self, args, namespace))

    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args),
        mock.patch.object(argparse.ArgumentParser, "parse_intermixed_args", parse_intermixed_args),
        mock.patch.object(sys, "argv", [prog, *argv]),
    ):
        try:
            main()
        except Parsed as done:
            return done.args[0]
        except SystemExit as err:
            assert err.code == 0, f"{prog} {' '.join(argv)}: the argument parser refused it"
            return None
    raise AssertionError(f"{prog} never parsed its arguments")


FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "-sc", "--shell-completion", "--config-path", "-cp"}
FLAGS = {"-m", "--multirun", "--resolve", "--hydra-help", "--help", "-h", "--version", "--info", "--run"}


def check_train(argv: list[str]) -> None:
    overrides, it = [], iter(argv)
    for token in it:
        if token in FLAGS_WITH_VALUE:
            value = next(it)
            if token in ("-sc", "--shell-completion"):
                assert re.fullmatch(r"(install|uninstall|query)=(bash|zsh|fish)", value), value
        elif token.startswith("-"):
            assert token in FLAGS, f"unknown flag {token}"
        else:
            overrides.append(token)
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    variants = [fixed]
    for o in (o for o in parsed if o.is_sweep_override()):
        variants += [[*fixed, f"{o.get_key_element()}={v}"] for v in o.sweep_string_iterator()]
    for overrides in variants:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # launcher settings resolve
        OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
        with open_dict(cfg):
            del cfg["hydra"]
        validate(cfg)
        OmegaConf.to_container(cfg, resolve=True)


def check_evaluate(argv: list[str], tmp_path: Path) -> None:
    args = parses(evaluate.main, argv, "python -m sam_lab.evaluate")
    if args is None:
        return
    run = tmp_path / "run"  # a run directory with the default config: the overrides must apply to it
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    hydra_node = OmegaConf.create({"hydra": OmegaConf.to_container(cfg.hydra)})
    with open_dict(cfg):
        del cfg["hydra"]
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml(hydra_node))
    evaluate.run_config(run, args.overrides)


@pytest.mark.parametrize(("where", "program", "argvs"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_documented_command_parses(where, program, argvs, tmp_path):
    for argv in argvs:
        if program == "train":
            check_train(argv)
        elif program == "evaluate":
            check_evaluate(argv, tmp_path)
        elif program.startswith("scripts/"):
            module = runpy.run_path(str(ROOT / program), run_name="documented")
            parses(module["main"], argv, program)
        else:
            main = runpy.run_module(f"sam_lab.{program}", run_name="documented")["main"]
            parses(main, argv, f"python -m sam_lab.{program}")
