"""The ``vitkit`` command and its subcommands; ``tools/*.py`` are thin shims over them."""
