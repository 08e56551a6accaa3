"""What the tests share: service fixtures, helpers, the small apps the CLI tests load."""
