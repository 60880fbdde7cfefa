"""Imported by every Python process with this folder on PYTHONPATH: the process whose `LOCAL_RANK` equals
`DGGGAN_TEST_EXIT_LOCAL_RANK` exits with status 3 at once, before it meets the other ranks (a node process that
cannot start). Used by tests/test_multinode.py only."""

import os

if os.environ.get("LOCAL_RANK") == os.environ.get("DGGGAN_TEST_EXIT_LOCAL_RANK", "-"):
    os._exit(3)
