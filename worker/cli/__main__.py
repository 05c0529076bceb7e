"""``python -m worker.cli``: the same as ``render-cli``."""

from worker.cli import main

main()
