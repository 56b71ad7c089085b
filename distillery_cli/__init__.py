"""The entry-point layer: the `distillery` command (cli.py). It may import every layer below it
(`flows/`, `tasks/`, `distillery/`, and `bench/` from a source checkout); nothing imports it."""
