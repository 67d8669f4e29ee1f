# deploybot in a container. Build: docker build -t deploybot .
# Run against your Redis: docker run -e REDIS_URL=redis://redis:6379/0 deploybot
# Without REDIS_URL it starts its embedded server, keeping data in the /data volume.
FROM python:3.11-slim

# /healthz, /readyz and /metrics must be reachable from outside the container, so the HTTP
# server listens on every interface here (its default is 127.0.0.1 only).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DEPLOYBOT_DATA_DIR=/data/redis \
    DEPLOYBOT_HTTP_HOST=0.0.0.0 \
    DEPLOYBOT_HTTP_PORT=8080

WORKDIR /app
# requirements.lock pins every runtime dependency to the versions the tests ran with
# (regenerate it with `pip freeze` from a fresh `pip install .`).
COPY pyproject.toml README.md config.yaml requirements.lock ./
COPY bot ./bot
COPY adapters ./adapters
RUN pip install --constraint requirements.lock . \
    && useradd --create-home --uid 10001 deploybot \
    && mkdir -p /data \
    && chown deploybot /data

USER deploybot
VOLUME ["/data"]
EXPOSE 8080
# Liveness only: the slim image has no curl, so Python asks /healthz. Readiness (Redis and
# chat connected) is /readyz, for an orchestrator's readiness probe (see docker-compose.yml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DEPLOYBOT_HTTP_PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["deploybot"]
CMD ["run"]
