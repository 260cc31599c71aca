"""Command-line interface. Each module here with ``add_parser`` and ``run`` is one subcommand."""
