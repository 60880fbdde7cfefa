"""Hydra launchers of dgggan-pl: `hydra/launcher=ddp` (one fresh torchrun per sweep job) and `=slurm`.

`hydra_plugins` is a namespace package (no `__init__.py` there): Hydra scans it for plugins, and the
editable install puts `src/` on `sys.path`, so this folder is found without an entry point.
"""
