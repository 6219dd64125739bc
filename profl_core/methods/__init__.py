"""FL methods, one algorithm per file."""
