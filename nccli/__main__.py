"""``python -m nccli`` (and ``torchrun -m nccli``) runs the command line."""

from nccli.cli import main

main()
