# asgi-gateway with the Django demo (demo/), as docker-compose.yml runs it. docs/deploy.md
# describes the image: its environment variables, ports, user and health check.
#
# The build stage makes a virtualenv; the final stage copies only that venv and the project files
# onto a slim Python, so no compiler, pip cache or build dependency reaches the running image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, named by pyproject.toml alone: this layer is rebuilt only when they change.
COPY pyproject.toml ./
COPY demo/requirements.txt ./demo-requirements.txt
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; x = p['optional-dependencies']; print('\n'.join(p['dependencies'] + x['django'] + x['redis'] + x['speed']))" > requirements.txt \
 && pip install -r requirements.txt -r demo-requirements.txt
COPY README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
RUN pip install --no-deps .
# The demo's static files, collected once at build time (the gateway serves STATIC_ROOT).
COPY demo /app/demo
RUN cd /app/demo && DJANGO_SECRET_KEY=build-only python manage.py collectstatic --noinput -v 0


FROM ${PYTHON_IMAGE}
RUN useradd --no-create-home --uid 10001 --home-dir /app --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /app/demo /app/demo
COPY config/compose.yaml /app/config/compose.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/app/config/compose.yaml \
    GATEWAY_READY_URL=http://127.0.0.1:9000/readyz
WORKDIR /app/demo
USER gateway
# 8000 HTTP and WebSocket, 2525 SMTP, 9000 the admin listener (metrics and health; keep it internal)
EXPOSE 8000 2525 9000
# The gateway drains on SIGTERM (shutdown.drain_timeout); give it longer than that before SIGKILL.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['GATEWAY_READY_URL'], timeout=4).status == 200 else 1)"]
# exec: the gateway itself is PID 1's process, so it receives the stop signal
CMD ["sh", "-c", "exec gateway run -c \"$GATEWAY_CONFIG\""]
