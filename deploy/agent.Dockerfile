# The tenant agent on an empty base. Build the static binary first, so no
# registry is needed: make build && docker build -f deploy/agent.Dockerfile -t tenant-agent/agent:dev .
# Run it with the Docker socket mounted (see deploy/compose/agent.yaml).
FROM scratch
ARG VERSION=dev
LABEL org.opencontainers.image.title="tenant-agent" \
      org.opencontainers.image.description="Dials out to the control plane and refreshes this host's workspace containers by digest" \
      org.opencontainers.image.source="https://github.com/molecule-ai/tenant-agent" \
      org.opencontainers.image.version="${VERSION}"
COPY bin/tenant-agent /tenant-agent
# The agent runs as root in its container: it needs the Docker socket,
# which is root-equivalent on the host anyway. To run it as another user,
# give that user the socket's group (docker run --user 65532 --group-add
# "$(stat -c %g /var/run/docker.sock)") and a state volume it can write.
# The journal must outlive the container: mount a volume on /var/lib/tenant-agent.
VOLUME ["/certs", "/var/lib/tenant-agent"]
# Settings as TENANT_AGENT_* defaults, so `docker run -e` and compose's
# environment override them (flags in ENTRYPOINT would win over both).
ENV TENANT_AGENT_CERT=/certs/agent.pem \
    TENANT_AGENT_KEY=/certs/agent-key.pem \
    TENANT_AGENT_CA=/certs/ca.pem \
    TENANT_AGENT_STATE_DIR=/var/lib/tenant-agent
ENTRYPOINT ["/tenant-agent"]
