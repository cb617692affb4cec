# Switchyard: slim, non-root, with a health check.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY proxy ./proxy
RUN pip install --no-cache-dir --prefix=/install .

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
