"""The test suite. It mirrors the package: tests/<package>/ holds the tests of
outboxkit/<package>/, the tests of the root modules and of the whole (the README, the
architecture) sit here, and tests/support/ holds what they share (service fixtures, helpers,
the small apps the CLI tests load)."""
