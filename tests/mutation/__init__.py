"""Mutation testing of the money and security paths (``make mutants``); see README.md."""
