"""docs/EXTENDING.md's promise: a new SAM variant is one Python file plus one YAML, and nothing else."""

import json
import os
import shutil
import textwrap

from tests.conftest import CONF, ROOT, TINY, cli

TOY = '''
"""SignSAM: e = rho * sign(g) / ||sign(g)||; d = g_s. A toy variant for the test."""
import torch

from sam_lab.optim import TwoPass


class SignSAM(TwoPass):
    def perturbation(self, params, g):
        return self.rho_step(params, torch._foreach_sign(g))
'''


def test_a_new_variant_is_one_python_file_and_one_yaml(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)  # the user's copy of the config tree; the package is untouched
    (tmp_path / "signsam.py").write_text(textwrap.dedent(TOY))
    (conf / "optimizer" / "signsam.yaml").write_text(
        "defaults:\n  - sam\n  - _self_\n_target_: signsam.SignSAM\n"
    )
    run = tmp_path / "run"
    res = cli(
        [
            "--config-path",
            str(conf),
            *TINY,
            "optimizer=signsam",
            "rho=0.1",
            "data.subset=32",
            "batch_size=32",
            "metrics.grad_stats_every=1",
            f"hydra.run.dir={run}",
        ],  # fmt: skip
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])},
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["optimizer"] == "signsam" and summary["rho"] == 0.1
    assert 0.0 <= summary["opt/ratio_gt1_frac"] <= 1.0  # the two-pass statistics of the new variant
