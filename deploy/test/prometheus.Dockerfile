# Test-only stand-in for prom/prometheus, for tests/deploy/test_compose.py where no registry can be pulled
# from: Debian's prometheus package on the local base image (tools/local-base-image.sh), with the official
# image's entry point, defaults, user (nobody, 65534) and data directory, so the compose service runs it
# as it would the official one. Operators use prom/prometheus; nothing else builds this.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# Debian's version follows the base's release.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o 65534 -g 65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
