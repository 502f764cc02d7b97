# neo-exporter container image.
#
#   docker build -t neo-exporter .
#   docker run --read-only -p 9877:9877 -v neo-exporter-state:/var/lib/neo-exporter \
#     -e NEO_EXPORTER_API_KEY_FILE=/run/secrets/neo_api_key ... neo-exporter
#
# The builder stage builds the wheel and installs it with its dependencies into a venv;
# the final stage copies only that venv onto the same slim Python base, so no compiler,
# pip cache or source tree ships. The image runs as uid 65532 and writes nowhere but the
# state volume, so it works with a read-only root filesystem.

FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# .dockerignore admits only what the build needs: pyproject.toml, README.md, exporter/
# and the health check script.
COPY . .
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/neo-exporter \
    && /opt/neo-exporter/bin/pip install --no-compile /wheels/*.whl \
    && /opt/neo-exporter/bin/pip uninstall --yes pip setuptools


FROM python:3.11-slim-bookworm

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="neo-exporter" \
      org.opencontainers.image.description="Prometheus exporter for ProjectDiscovery Neo task usage: credits, steps, tool calls and durations, counted exactly once." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# No .pyc files at run time (the root filesystem may be read-only), unbuffered logs, and
# container-friendly defaults for the settings; every NEO_EXPORTER_* can be overridden.
ENV PATH="/opt/neo-exporter/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NEO_EXPORTER_LISTEN_ADDRESS="0.0.0.0:9877" \
    NEO_EXPORTER_STATE_PATH="/var/lib/neo-exporter/state.db" \
    NEO_EXPORTER_LOG_FORMAT="json"

RUN groupadd --system --gid 65532 neo \
    && useradd --system --uid 65532 --gid neo --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin neo \
    && install --directory --owner=65532 --group=65532 --mode=0750 /var/lib/neo-exporter

COPY --from=builder /opt/neo-exporter /opt/neo-exporter
COPY deploy/docker/healthcheck.py /usr/local/lib/neo-exporter/healthcheck.py

USER 65532:65532
WORKDIR /var/lib/neo-exporter
VOLUME ["/var/lib/neo-exporter"]
EXPOSE 9877

# slim has no curl: the check is a few lines of stdlib Python against /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/neo-exporter/healthcheck.py"]

ENTRYPOINT ["neo-exporter"]
CMD ["run"]
