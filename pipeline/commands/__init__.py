"""One module per group of `recsys` commands; `pipeline.cli` only builds the parser."""
