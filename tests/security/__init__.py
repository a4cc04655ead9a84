"""Hostile-user specifications: each module is one security boundary."""
