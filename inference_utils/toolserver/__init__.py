"""A tool server that speaks ToolBench's and StableToolBench's API protocol, offline.

``tools`` knows the APIs, ``cache`` keeps every answer in SQLite, ``upstream`` and ``simulate``
produce answers the cache lacks, ``service`` decides which source answers a call, ``app`` serves
it over HTTP and ``cli`` is ``python -m inference_utils.toolserver``. The client agents use is
:mod:`inference_utils.toolclient`.
"""
