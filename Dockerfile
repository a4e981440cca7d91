# Sparkle-M: one image for the processor and the edge agent.
#
# Processor (the default):
#   docker build -t sparklem .
#   docker run --rm -e SPARKLEM_BOOTSTRAP_SERVERS=kafka:19092 \
#       --env-file processor.env \
#       -v "$PWD/certificates:/app/certificates:ro" sparklem            # = main.py run
#   (processor.env, mode 0600: SPARKLEM_DATABASE_URL=...; no password on a command line)
#   docker run --rm ... sparklem init | plugins | run --workers auto
#
# Agent, from the same image (the bundle and its passphrase come from outside, never baked in):
#   docker run --rm -v "$PWD/config.tar.xz:/app/config.tar.xz:ro" \
#       -e SPARKLEM_AGENT_PASSPHRASE --entrypoint python3 sparklem \
#       -m sparklem_core.agent --bundle config.tar.xz
#   (add --no-healthcheck: the HEALTHCHECK below asks the processor's /healthz)
#
# No secret is part of the image: keys, bundles and passwords arrive by volume or environment.

# --- build: install the project and its dependencies into a virtual environment ---
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY sparklem_core/ sparklem_core/
COPY plugins/ plugins/
RUN pip install --no-cache-dir ".[postgres]"

# --- runtime ---
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SPARKLEM_CERTIFICATES_DIR=/app/certificates \
    SPARKLEM_HTTP_LISTEN=0.0.0.0:9500

RUN groupadd --system --gid 10001 sparklem \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin sparklem

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
COPY --chown=10001:10001 pyproject.toml README.md main.py gen_config.py ./
COPY --chown=10001:10001 sparklem_core/ sparklem_core/
COPY --chown=10001:10001 plugins/ plugins/
RUN mkdir -p /app/certificates && chown 10001:10001 /app /app/certificates

USER 10001:10001

# /metrics, /healthz, /readyz. The health check is /healthz (the loop turns), never
# /readyz: a processor catching up on lag, or waiting for its database, must not be restarted.
EXPOSE 9500
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=4 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9500/healthz', timeout=4)"]

ENTRYPOINT ["python3", "main.py"]
CMD ["run"]
