"""Synthetic people for the demo and the identity simulator: names only, nothing real."""
