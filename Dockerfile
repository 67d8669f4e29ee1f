# deploybot in a container. Build: docker build -t deploybot .
# Run against your Redis: docker run -e REDIS_URL=redis://redis:6379/0 deploybot
# Without REDIS_URL it starts its embedded server, keeping data in the /data volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DEPLOYBOT_DATA_DIR=/data/redis

WORKDIR /app
COPY pyproject.toml README.md config.yaml ./
COPY bot ./bot
COPY adapters ./adapters
RUN pip install . \
    && useradd --create-home --uid 10001 deploybot \
    && mkdir -p /data \
    && chown deploybot /data

USER deploybot
VOLUME ["/data"]
ENTRYPOINT ["deploybot"]
CMD ["run"]
