"""GLPFT."""
