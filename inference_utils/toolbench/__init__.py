"""The command paths of earlier releases, kept so that ``python -m`` lines in scripts still
run: ``infer_pipeline`` is :mod:`inference_utils.static.infer`, ``evaluate``
:mod:`inference_utils.static.evaluate`, ``run_agent`` :mod:`inference_utils.agent.run`."""
