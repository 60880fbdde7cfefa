"""Silence known, harmless messages of dependencies that a user can do nothing about.

Only exact, identified messages are dropped; everything else (including other deprecations) still shows:

* Lightning's "Tip: ... try installing litlogger" advert, printed at every Trainer construction;
* the `isinstance(treespec, LeafSpec)` FutureWarning that Lightning's own `_pytree` helper triggers in torch
  (Lightning's code, not ours, uses the deprecated class; nothing changes in what runs).
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
LITLOGGER_TIP = "try installing [litlogger]"
LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropLitloggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return LITLOGGER_TIP not in str(record.msg)


_TIP_FILTER = _DropLitloggerTip()


def silence_dependency_noise() -> None:
    """Install the filters (idempotent); call at the start of a CLI's main."""
    logger = logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER)
    if _TIP_FILTER not in logger.filters:
        logger.addFilter(_TIP_FILTER)
    warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION, category=FutureWarning)
