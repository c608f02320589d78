# distsel on the official Ray image of the pinned Ray version, with the locked dependency set.
# CPU image by default; for GPU nodes build FROM a -gpu tag with --build-arg TORCH_INDEX_URL=
# (empty: PyPI's CUDA build of torch).
FROM rayproject/ray:2.60.0-py311
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /home/ray/distsel
COPY --chown=ray:users pyproject.toml README.md requirements.lock ./
COPY --chown=ray:users distsel ./distsel
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users cluster ./cluster
RUN pip install --no-cache-dir --no-deps \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$(grep -m1 '^torch==' requirements.lock | cut -d' ' -f1)" \
 && pip install --no-cache-dir --constraint requirements.lock .
