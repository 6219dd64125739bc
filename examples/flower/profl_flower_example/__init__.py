"""A Flower app running the suite's methods with their memory tables (docs/flower.md)."""
