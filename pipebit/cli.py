"""The ``pipebit`` command (placeholder until the CLI lands)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pipebit`` and ``python -m pipebit``; returns the exit status."""
    raise SystemExit("the pipebit command is not implemented yet")
