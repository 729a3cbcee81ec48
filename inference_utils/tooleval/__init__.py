"""ToolEval: answer conversion, pass rate and win rate, as ToolBench and StableToolBench
compute them (with their defects fixed and named), through any OpenAI-compatible judge."""
