"""One module per ``mmxai`` subcommand, each exposing ``add_arguments(parser)`` and
``run(args) -> int``. ``mmxai.cli.COMMANDS`` names them; they are imported only when run.
"""
