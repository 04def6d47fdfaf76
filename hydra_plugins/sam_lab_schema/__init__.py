"""Registers sam_lab's config schema with Hydra, so that `conf/train.yaml` composes with nothing imported.

`conf/train.yaml` starts from the typed schema (`defaults: - train_schema`), a ConfigStore entry. Hydra
imports every module of the `hydra_plugins` namespace package when it starts (the command line, and
`initialize` / `initialize_config_dir` of the compose API), so registering here makes `compose("train")` work
in a notebook too (README: "Composing the config in Python").
"""

from sam_lab.config import register

register()
