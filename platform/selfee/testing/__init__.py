"""Tools for testing and benchmarking the platform (no test framework inside)."""
