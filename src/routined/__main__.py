"""`routined` and `python -m routined`.

`--version` is answered before the commands are loaded: scripts and packagers ask it
often, and it should cost no more than starting Python.
"""

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from routined import __version__

        sys.stdout.write(f"{__version__}\n")
        return
    from routined.cli import main as routined

    routined()


if __name__ == "__main__":
    main()
