# coraza-spoa-py: the agent on Debian 12 (bookworm) with Debian's libmodsecurity3 and OWASP CRS
# (modsecurity-crs). docs/operations.md "Docker" says how to build and run it.
#
#   docker build -t coraza-spoa-py .
#   docker run --rm -p 9000:9000 -p 9100:9100 coraza-spoa-py
#
# Two stages: the builder has the compiler for the engine binding (coraza_spoa_py/native/),
# the image only what runs. The apt packages are those of scripts/install-system-deps.sh.

FROM debian:bookworm-slim AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3-venv python3-dev gcc g++ libc6-dev libmodsecurity3 libmodsecurity-dev \
        ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY coraza_spoa_py /src/coraza_spoa_py
# the package, then its compiled binding next to it in site-packages (native/build.py)
RUN python3 -m venv /opt/coraza-spoa-py \
    && /opt/coraza-spoa-py/bin/pip install --no-cache-dir /src \
    && /opt/coraza-spoa-py/bin/python -m coraza_spoa_py.native.build \
    && /opt/coraza-spoa-py/bin/coraza-spoa-py -version

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3-venv libmodsecurity3 libjemalloc2 modsecurity-crs ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin coraza-spoa
COPY --from=builder /opt/coraza-spoa-py /opt/coraza-spoa-py
COPY deploy/docker/config.yml /etc/coraza-spoa/config.yaml
ENV PATH=/opt/coraza-spoa-py/bin:$PATH
# the SPOP listener (config.yml "bind") and -metrics-addr (/metrics, /healthz, /readyz)
EXPOSE 9000 9100
USER 10001:10001
# /readyz: rules loaded and the SPOP listener bound (503 before, and while stopping)
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/opt/coraza-spoa-py/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/readyz', timeout=2)"]
# SIGTERM drains for graceful_timeout_s (10 s by default): give `docker stop` a longer timeout
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/coraza-spoa-py/bin/coraza-spoa-py"]
CMD ["-config", "/etc/coraza-spoa/config.yaml", "-metrics-addr", ":9100"]
