"""Several processes, one run: which rank this process is (`cluster`), how the ranks of a launch meet and agree
before anything is written (`group`), and how a rank that cannot end itself is ended (`watch`).

docs/multinode.md says what holds on N nodes and what a site must provide.
"""
