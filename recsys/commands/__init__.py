"""One module per group of `recsys` commands; `recsys.cli` only builds the parser."""
