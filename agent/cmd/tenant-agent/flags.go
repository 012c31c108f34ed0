package main

import (
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/molecule-ai/tenant-agent/agent"
	"github.com/molecule-ai/tenant-agent/pkg/cliflag"
	"github.com/molecule-ai/tenant-agent/pkg/version"
)

const summary = `tenant-agent keeps one mutual-TLS gRPC stream open to the control plane,
dialed out from the tenant host, so the control plane can push
RefreshRuntimeImage(runtime, digest) through the tenant's own connection.
It pulls the image by digest through the Docker Engine API and recreates the
runtime's containers on it, keeping their volumes, config and data; a
recreate that fails its health gate is rolled back.

The tenant is read from the agent's certificate (spiffe://<td>/tenant/<slug>).
Only digest references are accepted, only for the runtime's own repository
(--repository-pattern) and the allow-list (--allow-repos), and with
--signature-policy only images signed by a key the policy names. Container
environment and inspect output never leave the host.

Example:

  tenant-agent --control-plane cp.example:7443 --cert agent.pem --key agent-key.pem \
      --ca ca.pem --allow-repos registry.example/molecule-ai/

"tenant-agent check [flags]" checks the setup with the same flags and exits:
the certificate, key and CA, one stream opened to the control plane (nothing
registered), Docker, and the managed containers per runtime; one line each,
exit status 0 only if all pass.`

func parseFlags(args []string, stdout io.Writer) (agent.Config, error) {
	cfg := agent.Defaults()
	cmd := cliflag.Command{Name: "tenant-agent", Summary: summary, EnvPrefix: "TENANT_AGENT", Version: version.String()}
	fs := flag.NewFlagSet(cmd.Name, flag.ContinueOnError)
	fs.StringVar(&cfg.ControlPlane, "control-plane", cfg.ControlPlane, "the control plane's agent address, host:port, or up to 16 separated by commas (replicas:\n"+
		"cp-a.example:7443,cp-b.example:7443). Each connection attempt takes the next address in a shuffled order, so\n"+
		"a fleet spreads over the replicas and a dead one costs one backoff step; a host is resolved at every attempt\n"+
		"and its DNS addresses are tried in random order. The certificate is checked against the host as written\n"+
		"(or --server-name), never an IP it resolved to. Told to reconnect, the agent picks another address if it\n"+
		"has one")
	fs.StringVar(&cfg.ServerName, "server-name", "", "name the control plane's certificate must carry (default: the host of --control-plane)")
	fs.StringVar(&cfg.ControlPlaneID, "control-plane-id", "", "SPIFFE ID the control plane's certificate must carry, e.g. spiffe://molecule.local/controlplane/prod\n(default: any; the CA and --server-name are checked either way)")
	fs.StringVar(&cfg.TLS.Cert, "cert", cfg.TLS.Cert, "agent certificate (PEM); re-read when it changes")
	fs.StringVar(&cfg.TLS.Key, "key", cfg.TLS.Key, "agent key (PEM)")
	fs.StringVar(&cfg.TLS.CA, "ca", cfg.TLS.CA, "CA bundle the control plane is verified against")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", cfg.TrustDomain, "SPIFFE trust domain of the agent's identity")
	fs.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "journal and result outbox (keep it across restarts)")
	fs.StringVar(&cfg.DockerHost, "docker-host", "", "Docker Engine address (default: $DOCKER_HOST or the local socket)")
	labels := fs.String("labels", "molecule.org-id={tenant},molecule.platform.managed=true", "labels selecting this tenant's containers, key=value,...; {tenant} is the slug from the certificate")
	fs.StringVar(&cfg.RepositoryPattern, "repository-pattern", cfg.RepositoryPattern, "a runtime's image repository, {runtime} standing for its plain name ([a-z0-9][a-z0-9_.-]*).\nWith a / (registry.example/molecule-ai/workspace-template-{runtime}) the whole repository must match;\nwithout, its last path element, and then with no --allow-repos all the runtime's containers must\nrun one repository, or its refreshes and prefetches are refused")
	fs.StringVar(&cfg.RuntimeLabel, "runtime-label", "", "container label naming its runtime, if set (wins over --repository-pattern)")
	allow := fs.String("allow-repos", "", "repositories commands may use, comma-separated; an entry ending in / is a prefix\n(default: only the repository a runtime's containers already run)")
	fs.StringVar(&cfg.RegistryCredentials, "registry-credentials", defaultCredentials(), "Docker config file with registry credentials: auths, credHelpers and credsStore, a helper being\ndocker-credential-<name> on PATH (e.g. \"credHelpers\": {\"<id>.dkr.ecr.<region>.amazonaws.com\": \"ecr-login\"});\nread again, and the helper run again, at each pull, so rotated tokens need no restart")
	fs.StringVar(&cfg.SignaturePolicy, "signature-policy", "", "signature policy `file` (JSON; see docs/signatures.md): before pulling, the image of every refresh and\n"+
		"prefetch must carry a cosign signature by a key of the most specific rule matching its repository; no\n"+
		"matching rule refuses it. In \"enforce\" mode a missing or bad signature fails the command (phase VERIFYING,\n"+
		"nothing pulled or stopped); in \"warn\" mode the image is adopted and the result reports the problem.\n"+
		"Signatures are read with --registry-credentials; verified digests are remembered in --state-dir. The file\n"+
		"and its key files are re-read when they change (a bad edit is logged and the last good policy kept); a bad\n"+
		"file fails the start. Empty: images are not verified")
	fs.Var(byteSize{&cfg.MinFreeDisk}, "min-free-disk", "`size` a pull must leave free on Docker's data root (e.g. 5GiB, 500MiB); a pull that would leave\nless is refused before anything is touched")
	fs.IntVar(&cfg.KeepImages, "keep-images", cfg.KeepImages, "after a successful refresh, the runtime's unused images kept besides the adopted one (the rollback\ntarget); older ones no container uses are removed; -1 removes none")
	fs.DurationVar(&cfg.HealthGateTimeout, "health-gate-timeout", cfg.HealthGateTimeout, "how long a new container may take to become healthy before it is rolled back")
	fs.DurationVar(&cfg.StabilityWindow, "stability-window", cfg.StabilityWindow, "how long a container without a healthcheck must run without restarting")
	fs.DurationVar(&cfg.PullTimeout, "pull-timeout", cfg.PullTimeout, "longest pull (images are large and links slow)")
	fs.IntVar(&cfg.MaxParallel, "max-parallel-recreates", cfg.MaxParallel, "containers of a runtime recreated at once: a refresh recreates one container (the canary) alone\n"+
		"through its health gate, then the rest at most this many at once, each with its own health gate, never a\n"+
		"container beside those it depends on (--network container:, --volumes-from, --link). Above 1, a container\n"+
		"without a healthcheck gives its place up once it runs, so stability windows overlap; 1 is one at a time,\n"+
		"each through its whole window. A command may ask for fewer, never more")
	legacyParallel := fs.Int("max-parallel", 0, "deprecated alias of --max-parallel-recreates (so is its variable); the new name wins if both are set")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", cfg.HeartbeatInterval, "health report interval until the control plane sets one")
	fs.DurationVar(&cfg.ResyncInterval, "resync-interval", cfg.ResyncInterval, "health reports come from Docker's event stream, re-read in full whenever the stream is\n"+
		"(re)attached; this often it is also checked against a container list (one request when nothing changed)")
	fs.DurationVar(&cfg.KeepaliveTime, "keepalive-time", cfg.KeepaliveTime, "idle time before an HTTP/2 ping to the control plane (at least 10s)")
	fs.DurationVar(&cfg.KeepaliveTimeout, "keepalive-timeout", cfg.KeepaliveTimeout, "how long a ping may go unanswered before the connection is dropped and redialed")
	fs.DurationVar(&cfg.ResultRetention, "result-retention", cfg.ResultRetention, "how long finished command IDs are remembered to refuse re-execution")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", "", "serve /metrics (Prometheus) and /healthz here, [host]:port; off when empty. Plain HTTP:\na missing host means 127.0.0.1; name an interface (10.0.0.5:9091, 0.0.0.0:9091) to expose it")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")

	if _, err := cmd.Parse(fs, args, stdout); err != nil {
		return cfg, err
	}
	if given(fs, "max-parallel") && !given(fs, "max-parallel-recreates") {
		cfg.MaxParallel = *legacyParallel
	}
	var err error
	if cfg.Labels, err = parseLabels(*labels); err != nil {
		return cfg, err
	}
	for _, r := range strings.Split(*allow, ",") {
		if r = strings.TrimSpace(r); r != "" {
			cfg.AllowRepositories = append(cfg.AllowRepositories, r)
		}
	}
	if cfg.Logger, err = cliflag.NewLogger(*logLevel, *logFormat); err != nil {
		return cfg, err
	}
	if given(fs, "max-parallel") {
		cfg.Logger.Warn("--max-parallel (TENANT_AGENT_MAX_PARALLEL) is deprecated: use --max-parallel-recreates", "component", "agent")
	}
	return cfg, nil
}

// given reports whether a flag was set, on the command line or by its
// environment variable.
func given(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("--labels entry %q: want key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}

func defaultCredentials() string {
	dir := os.Getenv("DOCKER_CONFIG")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		dir = home + "/.docker"
	}
	if _, err := os.Stat(dir + "/config.json"); err != nil {
		return ""
	}
	return dir + "/config.json"
}

// byteSize is a flag of a size in bytes: a number with an optional unit,
// binary (KiB, MiB, GiB, TiB, or K, M, G, T) or decimal (KB, MB, GB, TB).
type byteSize struct{ n *uint64 }

var byteUnits = map[string]float64{
	"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
}

func (b byteSize) String() string {
	if b.n == nil {
		return ""
	}
	for _, u := range []struct {
		name string
		size uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if *b.n >= u.size && *b.n%u.size == 0 {
			return fmt.Sprintf("%d%s", *b.n/u.size, u.name)
		}
	}
	return fmt.Sprint(*b.n)
}

func (b byteSize) Set(s string) error {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(s)
	}
	num, err := strconv.ParseFloat(s[:i], 64)
	unit, ok := byteUnits[strings.ToLower(strings.TrimSpace(s[i:]))]
	if err != nil || !ok || num < 0 || num*unit >= math.MaxUint64 {
		return fmt.Errorf("%q: want a size such as 5GiB, 500MiB or 0", s)
	}
	*b.n = uint64(num * unit)
	return nil
}
