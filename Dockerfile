# Ketta server image. Not built or run on the machine this was written on (no image can be
# pulled there); tests/test_packaging.py runs the same wheel, install and command instead.
#   docker compose up --build        (compose.yaml: PostgreSQL with pgvector + Ketta)

# Stage 1: the wheel, from this checkout.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /dist

# Stage 2: the server. Binary wheels only for the PostgreSQL drivers: no compiler, no libpq headers.
FROM python:3.11-slim
# uid and gid 10001: compose's secrets are readable by group 10001 on the host (README, Containers)
RUN groupadd --gid 10001 ketta && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin ketta
COPY --from=wheel /dist/*.whl /tmp/install/
COPY constraints.txt /tmp/install/
RUN pip install --no-cache-dir -U 'pip>=25' \
 && pip install --no-cache-dir -c /tmp/install/constraints.txt \
      --only-binary asyncpg,pg8000,pgvector,psycopg2-binary /tmp/install/*.whl \
 && rm -rf /tmp/install
USER ketta
WORKDIR /home/ketta
# KETTA_HOME holds the encryption key made at first start (or the embedded database when no
# LETTA_PG_* is given); Letta writes its logs under LETTA_DIR. Mount volumes on both.
ENV KETTA_HOME=/home/ketta/.ketta \
    LETTA_DIR=/home/ketta/.letta \
    PYTHONUNBUFFERED=1
RUN mkdir -p /home/ketta/.ketta /home/ketta/.letta
EXPOSE 8283
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8283/v1/health/', timeout=4)"]
# LETTA_SERVER_PASSWORD_FILE / LETTA_PG_PASSWORD_FILE (compose secrets under /run/secrets) are
# read by ketta itself, so the command needs no shell wrapper.
CMD ["ketta", "server", "--host", "0.0.0.0", "--port", "8283"]
