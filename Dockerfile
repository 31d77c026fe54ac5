# The Sluice image: Airflow 3 (official image) + the pinned runtime requirements + the sluice package,
# the DAGs, plugins and airflow_settings.yaml. One image for every Airflow component and the
# MLflow server (docker-compose.yaml). No secret is baked in: they all come from the environment.
#
#   docker build -t sluice-airflow:3.3.2-python3.11 .
#
# The tag of the base image and the apache-airflow pin in requirements.txt must agree
# (tests/cluster/test_compose_matches_twin.py checks it).
FROM apache/airflow:3.3.2-python3.11

# The official image runs as the non-root `airflow` user (uid 50000, gid 0); so does this one.
USER airflow
WORKDIR /opt/airflow

# Dependencies first, so that a change of code does not reinstall them. Pinning apache-airflow to
# the image's version keeps the resolver from moving Airflow; every other pin comes from
# requirements.txt (the full resolved runtime set, `make lock`), so those versions win over the
# image's. Only the runtime set: the test and dev tools (requirements-dev.txt) never enter the image
# (tests/cluster/test_image_requirements.py).
COPY --chown=airflow:0 requirements.txt /opt/airflow/requirements.txt
RUN uv pip install --no-cache "apache-airflow==${AIRFLOW_VERSION}" -r /opt/airflow/requirements.txt

# The project: .dockerignore lets in only pyproject.toml, dags/, plugins/, include/ and
# airflow_settings.yaml (plugins/ is optional: copied when it exists).
COPY --chown=airflow:0 . /opt/airflow/
RUN uv pip install --no-cache --no-deps -e /opt/airflow \
    && python -c "import sluice.settings, sluice.ops.init, sluice.orchestration.settings_file"

# dags/ and plugins/ are Airflow's defaults under AIRFLOW_HOME (/opt/airflow); sluice looks for
# airflow_settings.yaml in SLUICE_HOME.
ENV SLUICE_HOME=/opt/airflow

USER airflow
