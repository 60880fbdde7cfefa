"""Small helpers shared by several entry points."""
