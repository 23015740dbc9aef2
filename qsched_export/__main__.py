"""`python -m qsched_export` runs the CLI, for machines where the console script is not on PATH."""

from qsched_export.cli import main

main()
