// Package docker is the agent's only contact with the Docker Engine: it
// lists the tenant's managed containers and keeps their state from the
// Engine's events, pulls images by digest with progress, and recreates
// containers on a new image with rollback.
package docker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
)

// Engine talks to one Docker Engine.
type Engine struct {
	cli *client.Client
	// base is the client whose transport a counting client wraps; closed
	// with cli.
	base   *client.Client
	images imageCache
	logger *slog.Logger
}

// Options configure an Engine.
type Options struct {
	// Host is the Engine's address; "" means DOCKER_HOST or the default
	// socket.
	Host   string
	Logger *slog.Logger
	// Requests, if set, counts every request the Engine sends.
	Requests *RequestCounter
}

// New connects to the Docker Engine at host ("" means DOCKER_HOST or the
// default socket), negotiating the API version (Engine 20.10 speaks 1.41).
func New(host string, logger *slog.Logger) (*Engine, error) {
	return NewWithOptions(Options{Host: host, Logger: logger})
}

// NewWithOptions is New with options.
func NewWithOptions(o Options) (*Engine, error) {
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if o.Host != "" {
		opts = append(opts, client.WithHost(o.Host))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	e := &Engine{cli: cli, logger: o.Logger.With("component", "docker")}
	if o.Requests != nil {
		// The client configures its own transport for the host (socket,
		// TLS from the environment) and accepts no wrapper after that, so
		// a second client sends through the first one's transport.
		hc := cli.HTTPClient()
		hc.Transport = countingTransport{c: o.Requests, next: hc.Transport}
		counted, err := client.NewClientWithOpts(append(opts, client.WithHost(cli.DaemonHost()), client.WithHTTPClient(hc))...)
		if err != nil {
			cli.Close()
			return nil, err
		}
		e.cli, e.base = counted, cli
	}
	return e, nil
}

// Ping checks that the Engine answers. It asks for the version rather than
// calling the client's Ping: the client negotiates its API version on the
// first versioned request, under a lock that its Ping bypasses (Ping reads
// the version while the negotiation writes it: a data race when the event
// watcher pings while another goroutine makes the first request).
func (e *Engine) Ping(ctx context.Context) error {
	_, err := e.cli.ServerVersion(ctx)
	return err
}

// Client exposes the Docker client for tests and the event watcher.
func (e *Engine) Client() *client.Client { return e.cli }

// Close releases the client.
func (e *Engine) Close() error {
	if e.base != nil {
		e.base.Close()
	}
	return e.cli.Close()
}

// Version returns the Engine's version.
func (e *Engine) Version(ctx context.Context) (string, error) {
	v, err := e.cli.ServerVersion(ctx)
	return v.Version, err
}

// Selector picks the tenant's managed containers by labels, all of which
// must match ("molecule.org-id" = "acme", "molecule.platform.managed" = "true").
type Selector map[string]string

// Filters is the selector as Docker list filters.
func (s Selector) Filters() filters.Args {
	f := filters.NewArgs()
	for k, v := range s {
		f.Add("label", k+"="+v)
	}
	return f
}

// Container is a managed container as the agent sees it.
type Container struct {
	Inspect container.InspectResponse
	// Repository is the repository of the image reference it was created
	// from, without tag or digest.
	Repository string
	// RepoDigests of its image.
	RepoDigests []string
	// ImageConfig is its image's config, for Rebuild.
	ImageConfig *container.Config
}

// Name is the container's name without the leading slash.
func (c Container) Name() string { return strings.TrimPrefix(c.Inspect.Name, "/") }

// DigestFor returns the digest the container's image has in repo, or "".
func (c Container) DigestFor(repo string) string {
	for _, d := range c.RepoDigests {
		if r, digest, ok := strings.Cut(d, "@"); ok && r == repo {
			return digest
		}
	}
	return ""
}

// List returns the managed containers, running or not.
func (e *Engine) List(ctx context.Context, sel Selector) ([]Container, error) {
	summaries, err := e.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: sel.Filters()})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]Container, 0, len(summaries))
	for _, s := range summaries {
		c, err := e.inspect(ctx, s.ID)
		if cerrdefs.IsNotFound(err) {
			e.logger.Warn("container vanished while listing", "id", shortID(s.ID))
			continue
		}
		if err != nil {
			// Not skipped: a refresh that left out a container it could not
			// see would report success for containers it never looked at.
			return nil, fmt.Errorf("inspect container %s: %w", shortID(s.ID), err)
		}
		out = append(out, c)
	}
	return out, nil
}

func (e *Engine) inspect(ctx context.Context, id string) (Container, error) {
	in, err := e.cli.ContainerInspect(ctx, id)
	if err != nil {
		return Container{}, err
	}
	c := Container{Inspect: in, Repository: RepositoryOf(in.Config.Image)}
	if img, ok := e.imageOf(ctx, in.Image); ok {
		c.RepoDigests, c.ImageConfig = img.repoDigests, img.config
	}
	return c, nil
}

// RepositoryOf strips a tag and digest from an image reference.
func RepositoryOf(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

// Status is a container as health reports show it: never its environment
// or inspect output, which can hold the workspace's decrypted secrets.
type Status struct {
	Name, ID, ImageRef, ImageDigest string
	// State is the Engine's ("running", "exited", ...); Health is its
	// healthcheck's status, "" without one.
	State        container.ContainerState
	Health       container.HealthStatus
	RestartCount int
	// StartedAt is zero if the container never started.
	StartedAt time.Time
}

// Status is what health reports may say of c.
func (c Container) Status() Status {
	st := Status{Name: c.Name(), ID: c.Inspect.ID, ImageRef: c.Inspect.Config.Image, ImageDigest: c.DigestFor(c.Repository), RestartCount: c.Inspect.RestartCount}
	if s := c.Inspect.State; s != nil {
		st.State = s.Status
		if s.Health != nil {
			st.Health = s.Health.Status
		}
		if t, err := time.Parse(time.RFC3339Nano, s.StartedAt); err == nil && t.Year() > 1 {
			st.StartedAt = t
		}
	}
	return st
}

// imageConfig puts an image's config in the shape of a container's, for
// Rebuild to subtract what a container inherited from it.
func imageConfig(c *dockerspec.DockerOCIImageConfig) *container.Config {
	if c == nil {
		return &container.Config{}
	}
	ports := nat.PortSet{}
	for p := range c.ExposedPorts {
		ports[nat.Port(p)] = struct{}{}
	}
	return &container.Config{
		User: c.User, ExposedPorts: ports, Env: c.Env, Entrypoint: c.Entrypoint, Cmd: c.Cmd,
		Volumes: c.Volumes, WorkingDir: c.WorkingDir, Labels: c.Labels, StopSignal: c.StopSignal, Healthcheck: c.Healthcheck,
	}
}
