"""Static step-level evaluation: the roles (or the backbone) on every gold step of a test set,
with the gold history, scored with α-UMi's metrics.

``steps`` builds the step samples, ``infer`` (``umi-infer``) predicts them on the driver,
``metrics`` holds α-UMi's definitions and ``evaluate`` (``umi-evaluate``) writes them.
"""
