# distsel on the official Ray image of the pinned Ray version (CPU; use a -gpu tag for GPU nodes).
FROM rayproject/ray:2.60.0-py311
WORKDIR /home/ray/distsel
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users distsel ./distsel
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users cluster ./cluster
RUN pip install --no-cache-dir .
