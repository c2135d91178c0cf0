"""``python -m streamad``: the command line."""

from streamad.cli import main

if __name__ == "__main__":
    main(prog_name="streamad")
