"""The real-time agent: ToolBench's searches (CoT, DFSDT) over a query's live tools.

``environment`` builds a query's functions and steps its calls, ``policies`` asks the roles
for the next message, ``search`` runs CoT@n and DFSDT, ``answers`` writes ToolBench's answer
files, and ``run`` (``umi-run-agent``) runs many queries at once on the driver.
"""
