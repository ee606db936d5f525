"""Store-level tests: the store protocol, a model test, concurrency and crashes (issue 2)."""
