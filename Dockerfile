# syntax=docker/dockerfile:1
# The webhook's image. Wheels for the project and every dependency are built in the first
# stage; the second installs only those, with no compiler and no package index.

FROM python:3.11-slim AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY webhook ./webhook
COPY certs ./certs
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="image-backup-webhook" \
      org.opencontainers.image.licenses="Apache-2.0"
# Bytecode is compiled at install time: at run time nothing is written outside /tmp, so the
# root filesystem can be read-only.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The wheels are bind-mounted for the install, so they never become a layer of the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels image-backup-webhook
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["image-backup"]
CMD ["serve", "--config", "/etc/image-backup/config.yaml"]
