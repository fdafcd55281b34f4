"""The framework snippets of docs/instrumenting.md, verbatim, run by test_snippets.py."""
