"""The streaming plane: the PyFlink job that turns rating events into online features (see README.md here)."""
