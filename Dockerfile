# gatewatch gateway (and sidecar: override the command with `sidecar --config ...`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY sidecar ./sidecar
RUN pip install . && useradd --create-home --uid 10001 gatewatch && mkdir -p /data/var && chown gatewatch /data/var

# The registry is mounted read-only at /data/registry; logs and state go to /data/var.
WORKDIR /data
USER gatewatch
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status == 200 else 1)"
ENTRYPOINT ["gatewatch"]
CMD ["serve", "--config", "/data/gatewatch.toml", "--listen", "0.0.0.0:8000"]
