# syntax=docker/dockerfile:1
# The webhook's image. Wheels for the project and every dependency are built in the first
# stage; the second installs only those, with no compiler and no package index.
#
# BASE is any image with Python >= 3.11 and its venv module: the official python image by
# default, or e.g. a Debian bookworm with python3-venv (the tests build on one made with
# debootstrap). The project goes into a virtual environment, so a base whose Python refuses
# system-wide installs (PEP 668, as Debian's does) works too.
ARG BASE=python:3.11-slim

FROM ${BASE} AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY webhook ./webhook
COPY certs ./certs
RUN python3 -m venv /build \
    && /build/bin/pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

FROM ${BASE}
LABEL org.opencontainers.image.title="image-backup-webhook" \
      org.opencontainers.image.licenses="Apache-2.0"
# Bytecode is compiled at install time: at run time nothing is written outside /tmp, so the
# root filesystem can be read-only.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/image-backup/bin:$PATH
# The wheels are bind-mounted for the install, so they never become a layer of the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m venv /opt/image-backup \
    && /opt/image-backup/bin/pip install --no-cache-dir --disable-pip-version-check \
        --no-index --find-links /wheels image-backup-webhook
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/opt/image-backup/bin/image-backup"]
CMD ["serve", "--config", "/etc/image-backup/config.yaml"]
