"""The tool's version: recorded in every stage record, run summary and manifest."""

__version__ = "0.2.0"
