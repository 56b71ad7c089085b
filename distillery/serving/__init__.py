"""Serving that follows the registry: the pure parts (no mlflow here).

- inputs:  request bodies in `mlflow models serve`'s formats -> rows of text, or a 4xx naming the problem
- models:  the served models (champion, shadow) behind one atomically swapped reference each
- predlog: the prediction log (SQLite, WAL) with feedback and retention
- stats:   paired statistics for the shadow report (bootstrap CI, exact McNemar)
- shadow_report: agreement, accuracy and latency of champion vs shadow from the log
- app:     the FastAPI app (scoring, shadow queue, /health, /ready, /metrics, /feedback)
- server:  builds the state from registry callables and runs uvicorn; reads feedback files
Registry access (resolving an alias, downloading a version) is injected by tasks/serving_registry.py.
"""
