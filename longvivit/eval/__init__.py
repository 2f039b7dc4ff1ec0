"""longvivit.eval."""
