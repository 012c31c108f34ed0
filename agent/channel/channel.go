// Package channel holds the agent's one stream to the control plane: it
// dials out, says Hello, sends heartbeats (every interval, and within a
// second of a Docker change), hands commands to the runner, and redials
// with exponential backoff and full jitter when the stream drops, so a
// control plane restart does not bring the whole fleet back in one second;
// a control plane shedding load says when to come back instead (a
// ResourceExhausted retry hint), and the backoff starts over after a
// stream that lasted.
// With several control plane addresses, each attempt takes the next of
// them in a shuffled order (see picker).
package channel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/molecule-ai/tenant-agent/agent/runner"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// Inventory reports the managed containers.
type Inventory func(ctx context.Context) ([]*tenantagentv1.RuntimeStatus, error)

// Config configures the channel.
type Config struct {
	// Addr is the control plane's agent address, host:port, or several
	// separated by commas (see ParseAddrs). A host is resolved at each
	// attempt, and its addresses are tried in a random order; the
	// certificate is verified against the host as written (or the
	// credentials' own server name), never against an IP it resolved to.
	Addr  string
	Creds credentials.TransportCredentials
	// Tenant is the agent's own tenant, from its certificate.
	Tenant        string
	Hostname      string
	Version       string
	DockerVersion func(context.Context) (string, error)
	Inventory     Inventory
	Runner        *runner.Runner
	// Changes signals Docker changes worth a prompt health report.
	Changes <-chan struct{}
	// HeartbeatInterval is used until Welcome says otherwise.
	HeartbeatInterval time.Duration
	// BackoffBase and BackoffMax bound the wait between dial attempts.
	BackoffBase, BackoffMax time.Duration
	// KeepaliveTime and KeepaliveTimeout are the HTTP/2 pings; the
	// heartbeat also exists because some L7 proxies drop pings.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// CA is the --ca file, named when the control plane's certificate
	// does not verify against it.
	CA string
	// Observer, if set, follows the stream (for metrics).
	Observer Observer
	Logger   *slog.Logger

	trim  *trimmer
	addrs []string
	// lookup resolves a host; nil is net.DefaultResolver (tests set it).
	lookup Lookup
}

// Observer follows the stream to the control plane; calls must not block.
type Observer interface {
	// Connected reports a stream welcomed (true) or ended (false).
	Connected(bool)
	// Heartbeat reports a Hello or health report sent.
	Heartbeat()
}

type noObserver struct{}

func (noObserver) Connected(bool) {}
func (noObserver) Heartbeat()     {}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Addr == "" || c.Creds == nil || c.Inventory == nil || c.Runner == nil {
		return errors.New("channel: Addr, Creds, Inventory and Runner are required")
	}
	addrs, err := ParseAddrs(c.Addr)
	if err != nil {
		return fmt.Errorf("channel: control plane address: %w", err)
	}
	c.addrs = addrs
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 15 * time.Second
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = time.Minute
	}
	if c.KeepaliveTime <= 0 {
		c.KeepaliveTime = 30 * time.Second
	}
	if c.KeepaliveTimeout <= 0 {
		c.KeepaliveTimeout = 10 * time.Second
	}
	if c.DockerVersion == nil {
		c.DockerVersion = func(context.Context) (string, error) { return "", errors.New("unknown") }
	}
	if c.Observer == nil {
		c.Observer = noObserver{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("component", "channel")
	c.trim = &trimmer{logger: c.Logger}
	return nil
}

// Run keeps a stream to the control plane open until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return err
	}
	pick := newPicker(cfg.addrs, cfg.lookup)
	tries := &attempts{base: cfg.BackoffBase, max: cfg.BackoffMax, stable: stableAfter}
	redial := &redials{logger: cfg.Logger}
	for ctx.Err() == nil {
		// One attempt: the next address, resolved now, one connection.
		addr := pick.next()
		creds := watchHandshakes(cfg.Creds) // this attempt's handshakes only
		welcomedAt, err := dialAttempt(ctx, cfg, pick, addr, creds)
		if !welcomedAt.IsZero() {
			cfg.Observer.Connected(false)
			redial.worked()
		}
		var rc *reconnectError
		var unresolved *resolveError
		if ctx.Err() != nil {
			return nil
		}
		if errors.As(err, &rc) {
			cfg.Logger.Info("control plane asked to reconnect", "address", addr, "after", rc.after, "reason", rc.reason)
			tries.requested(time.Now().Add(rc.after))
			sleep(ctx, rc.after)
			continue
		}
		wait, hint := tries.ended(welcomedAt, time.Now(), err)
		switch {
		case hint > 0:
			// The control plane is shedding load and said when to come
			// back: sooner would only be refused again, and this is not a
			// failure to back off from. The hint spaces these lines out.
			cfg.Logger.Warn("control plane asked the agent to wait before redialing", "address", addr, "error", err, "retry_delay", hint, "in", wait.Round(time.Millisecond))
		case errors.As(err, &unresolved):
			redial.failed(addr, "cannot resolve the control plane address; redialing", err.Error(), "address", addr, "in", wait.Round(time.Millisecond))
		default:
			redial.failed(addr, "stream to the control plane ended; redialing", Describe(err, creds.lastError(), cfg.CA), "address", addr, "in", wait.Round(time.Millisecond))
		}
		sleep(ctx, wait)
	}
	return nil
}

// stableAfter is how long a stream must have lasted for the backoff to
// start over when it ends: a stream that ends soon after its Welcome (a
// control plane that accepts and drops, or a storm after a restart)
// keeps the agent backing off.
const stableAfter = time.Minute

// restartWindow is how long after the time a control plane asked the
// agent to reconnect at a failed dial is taken for the control plane
// restarting: the agent redials within the first step of its backoff
// instead of climbing it, so that a fleet told to come back during a
// rolling deploy does not wait out a backoff grown while the new process
// was starting. Past it, an absent control plane is backed off from as
// from any other.
const restartWindow = 30 * time.Second

// attempts is the backoff between dial attempts.
type attempts struct {
	base, max, stable time.Duration
	// failures counts attempts since the last stable stream.
	failures int
	// restarting is until when failed dials keep to the first step of
	// the backoff (restartWindow).
	restarting time.Time
}

// requested starts the backoff over for a reconnect the control plane
// asked for at at.
func (a *attempts) requested(at time.Time) {
	a.failures = 0
	a.restarting = at.Add(restartWindow)
}

// ended returns how long to wait after an attempt that ended with err,
// welcomed at welcomedAt (zero if it never was), at now; and the control
// plane's retry hint, if it gave one, which is waited instead of the
// backoff and does not count as a failure.
func (a *attempts) ended(welcomedAt, now time.Time, err error) (wait, hint time.Duration) {
	if !welcomedAt.IsZero() && now.Sub(welcomedAt) >= a.stable {
		a.failures = 0
	}
	if hint, ok := retryHint(err); ok {
		return hintedWait(hint, a.max), hint
	}
	a.failures++
	if now.Before(a.restarting) {
		return backoff(a.base, a.base, a.failures), 0
	}
	return backoff(a.base, a.max, a.failures), 0
}

// dialAttempt is one attempt on one control plane address: it resolves
// the host, connects to one of its addresses (gRPC tries them in the
// order given until one answers) and runs a session on that connection,
// which it closes after. It reports when Welcome arrived (zero if never).
func dialAttempt(ctx context.Context, cfg Config, pick *picker, addr string, creds *handshakes) (time.Time, error) {
	addrs, err := pick.resolve(ctx, addr)
	if err != nil {
		return time.Time{}, err
	}
	conn, err := clientFor(addr, addrs, creds, grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: cfg.KeepaliveTime, Timeout: cfg.KeepaliveTimeout, PermitWithoutStream: true}))
	if err != nil {
		return time.Time{}, err
	}
	defer conn.Close()
	cfg.Logger.Debug("dialing the control plane", "address", addr, "resolved", addrList(addrs))
	at := &target{addr: addr}
	welcomedAt, err := session(ctx, cfg, tenantagentv1.NewAgentServiceClient(conn), at)
	if !welcomedAt.IsZero() {
		pick.left(at.peer)
	}
	return welcomedAt, err
}

// clientFor is a connection to the control plane address addr (host:port
// as written, the connection's authority) over the addresses it resolved
// to.
func clientFor(addr string, addrs []resolver.Address, creds credentials.TransportCredentials, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	r := manual.NewBuilderWithScheme(resolverScheme)
	r.InitialState(resolver.State{Addresses: addrs})
	conn, err := grpc.NewClient(resolverScheme+":///"+addr, append([]grpc.DialOption{grpc.WithResolvers(r), grpc.WithTransportCredentials(creds)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("control plane address %s: %w", limits.Quoted(addr), err)
	}
	return conn, nil
}

// target is the address of one attempt, as written, and once welcomed
// the peer's IP:port.
type target struct {
	addr, peer string
}

// backoff is full jitter: uniform in [0, min(max, base * 2^(n-1))].
func backoff(base, max time.Duration, n int) time.Duration {
	ceiling := base
	for i := 1; i < n && ceiling < max; i++ {
		ceiling *= 2
	}
	ceiling = min(ceiling, max)
	return rand.N(ceiling + 1)
}

// retryHint is the delay a ResourceExhausted status asks for in its
// RetryInfo detail, if it carries one.
func retryHint(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.ResourceExhausted {
		return 0, false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.RetryInfo); ok && info.GetRetryDelay().IsValid() {
			if hint := info.GetRetryDelay().AsDuration(); hint > 0 {
				return hint, true
			}
		}
	}
	return 0, false
}

// hintedWait is the hint plus up to a tenth of it in jitter, so agents
// refused together do not return together; capped at ceiling, so a
// control plane cannot park its agents for longer than their own backoff
// would.
func hintedWait(hint, ceiling time.Duration) time.Duration {
	return min(hint+rand.N(hint/10+1), ceiling)
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

type reconnectError struct {
	after  time.Duration
	reason string
}

func (e *reconnectError) Error() string { return "reconnect requested: " + e.reason }

// session runs one stream; it reports when Welcome arrived (zero if
// never).
func session(ctx context.Context, cfg Config, client tenantagentv1.AgentServiceClient, at *target) (time.Time, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, interval, reports, err := handshake(ctx, cfg, client, at)
	if err != nil {
		return time.Time{}, err
	}
	welcomedAt := time.Now()
	w := &welcomed{cfg: cfg, stream: stream, reports: reports, out: make(chan *tenantagentv1.AgentMessage, 1024), recvErr: make(chan error, 1), endAsked: make(chan struct{})}
	cfg.Runner.SetSender(w.queue)
	defer cfg.Runner.SetSender(nil)
	if err := w.sendOutbox(); err != nil {
		return welcomedAt, streamError(stream, err)
	}
	go w.receive()
	return welcomedAt, w.serve(ctx, interval)
}

// handshake opens the stream, says Hello and waits for Welcome; it
// returns the heartbeat interval to keep, Welcome's or the configured one,
// and the stream's reporter.
func handshake(ctx context.Context, cfg Config, client tenantagentv1.AgentServiceClient, at *target) (tenantagentv1.AgentService_ConnectClient, time.Duration, *reporter, error) {
	stream, err := client.Connect(ctx)
	if err != nil {
		return nil, 0, nil, err
	}
	hello := helloMessage(ctx, cfg)
	if err := stream.Send(hello); err != nil {
		return nil, 0, nil, streamError(stream, err)
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, 0, nil, err
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return nil, 0, nil, errors.New("the control plane's first message was not Welcome")
	}
	interval := cfg.HeartbeatInterval
	if d := welcome.GetHeartbeatInterval().AsDuration(); d > 0 {
		interval = d
	}
	if p, ok := peer.FromContext(stream.Context()); ok && p.Addr != nil {
		at.peer = p.Addr.String()
	}
	cfg.Logger.Info("connected to the control plane", "address", at.addr, "peer", at.peer, "identity", welcome.GetIdentity(), "heartbeat", interval, "control_plane_version", welcome.GetControlPlaneVersion())
	cfg.Observer.Connected(true)
	cfg.Observer.Heartbeat() // Hello was the first report
	reports := &reporter{cfg: cfg, unchangedOK: welcome.GetAcceptsUnchangedRuntimes(), held: hello.GetHello().GetRuntimes(),
		wholeEvery: wholeReportEvery, wholeAt: time.Now()}
	return stream, interval, reports, nil
}

// welcomed is a stream past Welcome: one goroutine receives (receive),
// the session's sends everything (serve).
type welcomed struct {
	cfg     Config
	stream  tenantagentv1.AgentService_ConnectClient
	reports *reporter
	// out queues the runner's messages for serve.
	out chan *tenantagentv1.AgentMessage
	// recvErr is how the stream ended, as receive saw it.
	recvErr chan error
	// endAsked is closed when the control plane asks (EndStream) that
	// serve close the agent's side of the stream.
	endAsked chan struct{}
}

// queue is the runner's sender: it never blocks.
func (w *welcomed) queue(m *tenantagentv1.AgentMessage) bool {
	select {
	case w.out <- m:
		return true
	default:
		return false // progress can be dropped; results stay in the outbox
	}
}

// sendOutbox sends the results the control plane has not confirmed.
func (w *welcomed) sendOutbox() error {
	for _, res := range w.cfg.Runner.Outbox() {
		if err := w.stream.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Result{Result: res}}); err != nil {
			return err
		}
	}
	return nil
}

// receive hands the control plane's messages to the runner until the
// stream ends or asks the agent to reconnect.
func (w *welcomed) receive() {
	for {
		m, err := w.stream.Recv()
		if err != nil {
			w.recvErr <- err
			return
		}
		if rc := m.GetReconnect(); rc != nil {
			w.recvErr <- &reconnectError{after: rc.GetAfter().AsDuration(), reason: rc.GetReason()}
			return
		}
		if m.GetEndStream() != nil {
			// The control plane ends the stream; its status, which says
			// why, comes once this side is closed.
			close(w.endAsked)
			w.recvErr <- w.statusAfterEnd()
			return
		}
		w.cfg.Runner.Handle(m)
	}
}

// serve sends the runner's messages, a health report and the outbox every
// interval, and a health report a second after Docker changes, until the
// stream ends.
func (w *welcomed) serve(ctx context.Context, interval time.Duration) error {
	heartbeat := time.NewTicker(interval)
	defer heartbeat.Stop()
	var debounce <-chan time.Time
	for {
		var err error
		select {
		case rerr := <-w.recvErr:
			return rerr
		case <-w.endAsked:
			// Only this goroutine sends, so only it may close the side.
			err = w.stream.CloseSend()
			if err == nil {
				return w.awaitEnd()
			}
		case m := <-w.out:
			err = w.stream.Send(m)
		case <-heartbeat.C:
			err = w.reports.send(ctx, w.stream)
			if err == nil {
				// Results the control plane has not confirmed go again,
				// in case one was dropped on a full queue.
				err = w.sendOutbox()
			}
		case <-w.cfg.Changes:
			if debounce == nil {
				debounce = time.After(time.Second)
			}
		case <-debounce:
			debounce = nil
			err = w.reports.send(ctx, w.stream)
		}
		if err != nil {
			return w.ended(err)
		}
	}
}

// endTimeout bounds how long the agent waits, its side closed, for the
// control plane to end a stream it asked to end.
const endTimeout = 5 * time.Second

// awaitEnd is the status of a stream whose side the agent closed when
// asked; a control plane that does not end it in endTimeout has it
// canceled (when serve returns).
func (w *welcomed) awaitEnd() error {
	select {
	case err := <-w.recvErr:
		return err
	case <-time.After(endTimeout):
		return errors.New("the control plane asked to end the stream and did not end it")
	}
}

// statusAfterEnd reads on, once the control plane asked to end the
// stream, to the status it ends it with; messages after EndStream are not
// the control plane's to send, and are dropped.
func (w *welcomed) statusAfterEnd() error {
	for {
		if _, err := w.stream.Recv(); err != nil {
			return err
		}
	}
}

// ended turns a failed Send into the stream's status, which receive reads
// (only one goroutine may call Recv).
func (w *welcomed) ended(err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	select {
	case rerr := <-w.recvErr:
		return rerr
	case <-time.After(5 * time.Second):
		return err
	}
}

// streamError is the real end of a stream whose Send failed: gRPC's Send
// says only io.EOF, and the status (with a retry hint, say) comes from Recv.
func streamError(stream tenantagentv1.AgentService_ConnectClient, err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	for {
		if _, rerr := stream.Recv(); rerr != nil {
			return rerr
		}
	}
}

func helloMessage(ctx context.Context, cfg Config) *tenantagentv1.AgentMessage {
	running, results := cfg.trim.held(cfg.Runner.Held())
	hello := &tenantagentv1.Hello{Tenant: cfg.Tenant, AgentVersion: limits.Truncate(cfg.Version, limits.Version), Hostname: limits.Truncate(cfg.Hostname, limits.Hostname),
		RunningCommandIds: running, ResultCommandIds: results}
	if v, err := cfg.DockerVersion(ctx); err == nil {
		hello.DockerVersion = limits.Truncate(v, limits.Version)
	}
	runtimes, err := cfg.Inventory(ctx)
	hello.DockerReachable = err == nil
	hello.Runtimes = cfg.trim.runtimes(runtimes)
	if err != nil {
		cfg.Logger.Warn("Docker unreachable; saying Hello without containers", "error", err)
	}
	return &tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Hello{Hello: hello}}
}

// wholeReportEvery bounds how long runtimes go unsent: should the control
// plane's record of them ever differ from what it was sent, a whole
// report puts it right.
const wholeReportEvery = 10 * time.Minute

// reporter sends one stream's health reports. Once Welcome says the
// control plane accepts it, a report whose runtimes are those it last
// sent says so instead of sending them again (at most for wholeEvery): a
// host's containers are most of a heartbeat, and most heartbeats change
// nothing.
type reporter struct {
	cfg         Config
	unchangedOK bool
	// held are the runtimes last sent on this stream, Hello's at first,
	// at wholeAt.
	held       []*tenantagentv1.RuntimeStatus
	wholeAt    time.Time
	wholeEvery time.Duration
}

func (r *reporter) send(ctx context.Context, stream tenantagentv1.AgentService_ConnectClient) error {
	cfg := r.cfg
	running, _ := cfg.trim.held(cfg.Runner.Held())
	h := &tenantagentv1.HealthReport{ObservedAt: timestamppb.Now(), AgentVersion: limits.Truncate(cfg.Version, limits.Version), RunningCommandIds: running}
	runtimes, err := cfg.Inventory(ctx)
	h.DockerReachable, h.Runtimes = err == nil, cfg.trim.runtimes(runtimes)
	if err != nil {
		h.DockerError = limits.Truncate(err.Error(), limits.Message)
	}
	whole, now := h.Runtimes, time.Now()
	if r.unchangedOK && now.Sub(r.wholeAt) < r.wholeEvery && sameRuntimes(whole, r.held) {
		h.Runtimes, h.RuntimesUnchanged = nil, true
	}
	if err := stream.Send(&tenantagentv1.AgentMessage{Body: &tenantagentv1.AgentMessage_Health{Health: h}}); err != nil {
		return err
	}
	if !h.RuntimesUnchanged {
		r.held, r.wholeAt = whole, now
	}
	cfg.Observer.Heartbeat()
	return nil
}

// sameRuntimes reports whether two inventories say the same, in order.
func sameRuntimes(a, b []*tenantagentv1.RuntimeStatus) bool {
	return slices.EqualFunc(a, b, func(x, y *tenantagentv1.RuntimeStatus) bool { return proto.Equal(x, y) })
}
