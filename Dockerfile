# Switchyard: slim, non-root, with a health check.
FROM python:3.11-slim AS build
# a C compiler for the native build: the request path's modules compiled with mypyc (`make native`)
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY proxy ./proxy
# the dependencies first (mypyc type-checks against them), then the compiled modules, then the
# package with them; the compiler and mypy stay in this stage
RUN pip install --no-cache-dir . mypy==2.4.1 types-PyYAML "setuptools>=77" \
 && python -c "from proxy.native import main; main()" \
 && pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /app switchyard
COPY --from=build /install /usr/local
WORKDIR /app
COPY proxy.yaml ./proxy.yaml
# the ledger's home when the policy puts it there (deploy/switchyard/proxy.yaml does)
RUN mkdir -p /var/lib/switchyard && chown switchyard /var/lib/switchyard
VOLUME ["/var/lib/switchyard"]
USER switchyard
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
ENTRYPOINT ["switchyard", "serve"]
CMD ["--config", "/app/proxy.yaml", "--host", "0.0.0.0", "--port", "8080"]
