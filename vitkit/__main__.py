"""``python -m vitkit ...``: the ``vitkit`` command (:mod:`vitkit.cli.main`) without the console script."""

import sys

from vitkit.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
