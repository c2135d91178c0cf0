"""``python -m streamad``: the command line."""

from streamad.cli import main

main(prog_name="streamad")
