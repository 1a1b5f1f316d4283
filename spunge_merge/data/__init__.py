"""Data: loading with `datasets`, the `--where` parser, the split stage."""
