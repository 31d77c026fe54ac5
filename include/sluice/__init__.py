"""Sluice: production ML pipelines on Apache Airflow.

The package does the work; the DAGs under ``dags/`` only wire it together.
"""

__version__ = "0.1.0"
