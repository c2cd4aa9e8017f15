"""``python -m deepcloak`` (also what ``torchrun -m deepcloak`` runs): the command line."""

from deepcloak.cli import main

main()
