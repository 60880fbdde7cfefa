"""Launching Hydra sweep jobs as fresh processes (torchrun per job) and recording their outcome.

The Hydra plugin glue lives in `hydra_plugins.dgggan_launchers`; this package holds the logic so that it can
be unit-tested without Hydra's plugin machinery.
"""
