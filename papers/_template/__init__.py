"""Template Paper: a complete, tiny paper to copy with `nox -s new-paper -- <slug>`."""
