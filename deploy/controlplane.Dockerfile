# The control plane on an empty base. Build the static binary first, so no
# registry is needed: make build && docker build -f deploy/controlplane.Dockerfile -t tenant-agent/controlplane:dev .
FROM scratch
ARG VERSION=dev
LABEL org.opencontainers.image.title="tenant-agent control plane" \
      org.opencontainers.image.description="Keeps runtime image pins and pushes refreshes down tenant agents' own mTLS streams" \
      org.opencontainers.image.source="https://github.com/molecule-ai/tenant-agent" \
      org.opencontainers.image.version="${VERSION}"
COPY bin/controlplane /controlplane
# The store's folder, owned by the unprivileged user the control plane runs
# as (it needs no privilege: it only listens on ports above 1024).
COPY --chown=65532:65532 deploy/rootfs/var/lib/controlplane /var/lib/controlplane
USER 65532:65532
# Certificates and the SQLite file live in volumes.
VOLUME ["/certs", "/var/lib/controlplane"]
EXPOSE 7443 7444 9090
# Settings as CONTROLPLANE_* defaults, so `docker run -e` overrides them.
# Inside a container the published ports decide what is reachable, so the
# HTTP port listens on all of the container's interfaces (the binary's own
# default is loopback: /metrics names tenants; publish 9090 only to a
# private network).
ENV CONTROLPLANE_CERT=/certs/controlplane.pem \
    CONTROLPLANE_KEY=/certs/controlplane-key.pem \
    CONTROLPLANE_CA=/certs/ca.pem \
    CONTROLPLANE_STORE=/var/lib/controlplane/controlplane.db \
    CONTROLPLANE_HTTP_ADDR=:9090
ENTRYPOINT ["/controlplane"]
