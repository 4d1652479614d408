"""Command line: one entry point, one module per subcommand (each exposes ``register`` and ``run``)."""
