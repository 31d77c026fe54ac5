"""What the Sluice view in the Airflow UI shows."""
