"""What the tests and benchmarks share: real servers, corpora, the worker as users run it."""
