# klaviyo-stream images, two targets from one base:
#   docker build .                   → the service (consumer, producer, doctor, status, dlq)
#   docker build --target sandbox .  → the Klaviyo sandbox (adds the `local` extra: jsonschema)
# Layers go from least to most often changed: dependencies (from the lock files) before source.
FROM python:3.11.13-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    METRICS_PORT=9400

WORKDIR /src

# Dependencies first, at the exact versions of requirements.lock (reproducible): this layer is
# rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir --no-deps -r requirements.lock

COPY pyproject.toml ./

# Then the package itself (dependencies already satisfied).
COPY README.md ./
COPY schemas ./schemas
COPY stream ./stream
# An unprivileged user too; its home holds the SQLite state when STATE_URL is not Redis.
RUN pip install --no-cache-dir --no-deps . \
    && cd / && rm -rf /src \
    && groupadd --system --gid 10001 stream \
    && useradd --system --uid 10001 --gid stream --home-dir /var/lib/klaviyo-stream \
       --create-home --shell /usr/sbin/nologin stream
WORKDIR /var/lib/klaviyo-stream
ENTRYPOINT ["klaviyo-stream"]


# The Klaviyo sandbox: the base plus the `local` extra's pinned dependencies.
FROM base AS sandbox
COPY requirements-local.lock /tmp/requirements-local.lock
RUN pip install --no-cache-dir --no-deps -r /tmp/requirements-local.lock \
    && rm /tmp/requirements-local.lock
USER stream:stream
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=5 \
    CMD python -c "import socket; socket.create_connection(('127.0.0.1', 8080), 2)" || exit 1
CMD ["sandbox", "--host", "0.0.0.0", "--port", "8080"]


# The service (the default target: last). No sandbox dependencies.
FROM base AS service
USER stream:stream

EXPOSE 9400

# python:slim has no curl: probe /healthz with the standard library (non-2xx raises → exit 1).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('METRICS_PORT', '9400'), timeout=3)" || exit 1

CMD ["run"]
