# The control plane on an empty base. Build the static binary first, so no
# registry is needed: make build && docker build -f deploy/controlplane.Dockerfile -t tenant-agent/controlplane:dev .
FROM scratch
COPY bin/controlplane /controlplane
# Certificates and the SQLite file live in volumes.
VOLUME ["/certs", "/var/lib/controlplane"]
EXPOSE 7443 7444 9090
ENTRYPOINT ["/controlplane", "--cert", "/certs/controlplane.pem", "--key", "/certs/controlplane-key.pem", "--ca", "/certs/ca.pem", "--store", "/var/lib/controlplane/controlplane.db"]
