# The tenant agent on an empty base. Build the static binary first, so no
# registry is needed: make build && docker build -f deploy/agent.Dockerfile -t tenant-agent/agent:dev .
# Run it with the Docker socket mounted (see deploy/compose/agent.yaml).
FROM scratch
COPY bin/tenant-agent /tenant-agent
# The journal must outlive the container: mount a volume on /var/lib/tenant-agent.
VOLUME ["/certs", "/var/lib/tenant-agent"]
ENTRYPOINT ["/tenant-agent", "--cert", "/certs/agent.pem", "--key", "/certs/agent-key.pem", "--ca", "/certs/ca.pem", "--state-dir", "/var/lib/tenant-agent"]
