"""``python -m tarnish_py``: the command line (``_cli``)."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
