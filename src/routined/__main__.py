"""`routined` and `python -m routined`.

`--version` is answered before the commands are loaded: scripts and packagers ask it
often, and it should cost no more than starting Python.
"""

import gc
import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from routined import __version__

        sys.stdout.write(f"{__version__}\n")
        return
    # Start-up builds objects that live as long as the process, and next to no
    # garbage: the collector waits while the commands load, and then leaves what
    # they built out of its passes (see `routined.cli.common.loading`).
    gc.disable()
    try:
        from routined.cli import main as routined
    finally:
        gc.freeze()
        gc.enable()
    routined()


if __name__ == "__main__":
    main()
