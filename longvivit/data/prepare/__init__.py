"""longvivit.data.prepare."""
