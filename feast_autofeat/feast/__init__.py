"""Everything Feast sees: helpers that return ordinary Feast objects (and, later, the batch engine)."""
