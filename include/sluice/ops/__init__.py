"""Operator tooling: the CLI, the embedded Airflow, the compose twin. Nothing imports it."""
