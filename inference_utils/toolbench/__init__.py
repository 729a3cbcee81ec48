"""ToolBench: static step-level inference and evaluation."""
