# Firehouse: slim Python, non-root, example rules and maps baked in.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --home-dir /var/lib/firehouse --create-home firehouse
WORKDIR /opt/firehouse
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN pip install --no-cache-dir . && rm -rf /root/.cache

COPY firehouse.yml /etc/firehouse/firehouse.yml
COPY rules /etc/firehouse/rules
COPY dependency_maps /etc/firehouse/dependency_maps

ENV FIREHOUSE_CONFIG=/etc/firehouse/firehouse.yml \
    FIREHOUSE_STATE=/var/lib/firehouse/firehouse.db \
    FIREHOUSE_LISTEN=0.0.0.0:9095 \
    PYTHONUNBUFFERED=1
USER firehouse
VOLUME ["/var/lib/firehouse"]
EXPOSE 9095
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9095/-/healthy', timeout=2)"]
ENTRYPOINT ["firehouse"]
CMD ["run"]
