# One image for every process of the Procfile (web, worker, beat; ingest later): docker-compose.yml
# picks the command. Static files are collected at build time and served by whitenoise.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
# Settings need a SECRET_KEY to load; this one exists only during the build step.
RUN SECRET_KEY=collectstatic-build-only DEBUG=0 IIOT_STATIC_MANIFEST=1 python manage.py collectstatic --noinput \
    && useradd --system --uid 10001 --home-dir /app iiot \
    && install -d -o iiot /var/lib/iiot-metrics  # PROMETHEUS_MULTIPROC_DIR (a volume shared by the processes)

USER iiot
EXPOSE 8000
CMD ["uvicorn", "iiot.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--lifespan", "off", "--no-proxy-headers"]
