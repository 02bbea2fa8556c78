"""`python -m d2lrun` is the `d2lrun` command."""

from d2lrun.cli import train_main

train_main()
