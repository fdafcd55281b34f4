"""The README's "Instrumenting your gateway" snippets, verbatim, run by test_snippets.py."""
