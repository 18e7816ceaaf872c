"""Nexmark on raykv (issue 14): the generated streams, batch models and raykv pipelines.

``models.py``: every query's final result as plain pyarrow/numpy over the whole tables;
``queries.py``: the queries raykv can run as pipelines today; ``python -m
benchmarks.nexmark``: events/s per query (``--help``).
"""
