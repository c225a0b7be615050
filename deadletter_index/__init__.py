"""Dead-letter index: keeps one Postgres row per record of the dead-letter topic."""
