"""One module per `bge` subcommand; `bge_cli.main` registers each of them on the `bge` group."""
