"""The `tl` command line."""
