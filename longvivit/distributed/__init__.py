"""longvivit.distributed."""
