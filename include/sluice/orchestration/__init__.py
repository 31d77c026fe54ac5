"""The Airflow-facing edge: run context, schedules, params, connections, the settings file."""
