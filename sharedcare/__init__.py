"""sharedcare: an open shared care record for a local health and care system."""

__version__ = "0.1.0"
