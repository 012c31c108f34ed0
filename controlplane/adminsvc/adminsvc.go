// Package adminsvc serves controlplane.v1.AdminService: a thin adapter that
// validates requests, calls the control plane's local services and maps
// their errors to status codes (errors.go).
package adminsvc

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	"github.com/molecule-ai/tenant-agent/controlplane/dispatch"
	"github.com/molecule-ai/tenant-agent/controlplane/fleet"
	"github.com/molecule-ai/tenant-agent/controlplane/pubsub"
	"github.com/molecule-ai/tenant-agent/controlplane/rollout"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
	"github.com/molecule-ai/tenant-agent/pkg/imageref"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// Config configures the service.
type Config struct {
	Store      store.Store
	Fleet      *fleet.Fleet
	Dispatcher *dispatch.Dispatcher
	Rollouts   *rollout.Rollouts
	// Signatures, if set, checks a refresh's explicit image_digest as a
	// promote's image is checked (signatures.go).
	Signatures rollout.Signatures
	Logger     *slog.Logger
	Now        func() time.Time
}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Store == nil || c.Fleet == nil || c.Dispatcher == nil || c.Rollouts == nil {
		return errors.New("adminsvc: Store, Fleet, Dispatcher and Rollouts are required")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("component", "adminsvc")
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

type service struct {
	controlplanev1.UnimplementedAdminServiceServer
	cfg Config
}

var _ controlplanev1.AdminServiceServer = (*service)(nil)

// New returns the AdminService implementation.
func New(cfg Config) (controlplanev1.AdminServiceServer, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	return &service{cfg: cfg}, nil
}

func caller(ctx context.Context) identity.Identity {
	id, _ := identity.FromContext(ctx) // the auth interceptor always sets it
	return id
}

// checkPromote checks the fields of a promote that rollout's own errors
// would repeat, so that what reaches them is already short.
func checkPromote(req *controlplanev1.PromoteRuntimeImageRequest) error {
	if err := checkName("runtime", req.GetRuntime()); err != nil {
		return err
	}
	if len(req.GetImageRef()) > limits.ImageRef {
		return cperr.TooLong("image_ref", req.GetImageRef(), limits.ImageRef)
	}
	for _, t := range req.GetOptions().GetCanaryTenants() {
		if err := checkName("canary tenant", t); err != nil {
			return err
		}
	}
	if n := req.GetOptions().GetMaxParallelContainers(); n > maxParallelContainers {
		return cperr.Invalid("options.max_parallel_containers is %d, at most %d", n, maxParallelContainers)
	}
	return nil
}

func (s *service) PromoteRuntimeImage(req *controlplanev1.PromoteRuntimeImageRequest, stream controlplanev1.AdminService_PromoteRuntimeImageServer) error {
	if err := checkPromote(req); err != nil {
		return s.status(err)
	}
	ro, sub, err := s.cfg.Rollouts.Promote(stream.Context(), caller(stream.Context()), promoteRequest(req))
	if err != nil {
		return s.status(err)
	}
	defer sub.Close()
	for {
		select {
		case <-stream.Context().Done():
			return s.status(stream.Context().Err()) // the rollout goes on without the caller
		case ev, ok := <-sub.C:
			if !ok {
				return s.status(cperr.Aborted("%v; the rollout goes on: ListCommands with rollout_id %q", sub.Err(), ro.ID))
			}
			if err := stream.Send(&controlplanev1.PromoteRuntimeImageResponse{Event: rolloutEventProto(ev)}); err != nil {
				return err
			}
			switch ev.Kind {
			case controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED,
				controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_ABORTED:
				return nil
			}
		}
	}
}

// maxParallelContainers bounds a command's parallel recreates; an agent
// caps it again at its own --max-parallel-recreates.
const maxParallelContainers = 64

func checkOptions(o *tenantagentv1.RefreshOptions) error {
	if o.GetMaxParallelContainers() > maxParallelContainers {
		return cperr.Invalid("options.max_parallel_containers is %d, at most %d", o.GetMaxParallelContainers(), maxParallelContainers)
	}
	for name, d := range map[string]interface{ AsDuration() time.Duration }{"health_gate_timeout": o.GetHealthGateTimeout(), "stability_window": o.GetStabilityWindow()} {
		if d != nil && d.AsDuration() < 0 {
			return cperr.Invalid("options.%s is negative", name)
		}
	}
	return nil
}

func (s *service) RefreshRuntimeImage(req *controlplanev1.RefreshRuntimeImageRequest, stream controlplanev1.AdminService_RefreshRuntimeImageServer) error {
	ctx := stream.Context()
	cmds, err := s.planRefresh(req, caller(ctx))
	if err != nil {
		return s.status(err)
	}
	warning, err := s.checkSignatures(ctx, req.GetImageDigest(), cmds)
	if err != nil {
		return s.status(err)
	}
	subs := make([]*pubsub.Subscription[dispatch.Update], len(cmds))
	for i, c := range cmds {
		subs[i] = s.cfg.Dispatcher.Watch(c.ID)
		defer subs[i].Close()
	}
	if err := s.cfg.Dispatcher.Issue(ctx, cmds); err != nil {
		return s.status(err)
	}
	for i, c := range cmds {
		if err := s.follow(ctx, c.ID, subs[i], func(ev *controlplanev1.CommandEvent) error {
			if warning != "" { // told once, in the first event
				ev.Message, warning = warning+"; "+ev.Message, ""
			}
			return stream.Send(&controlplanev1.RefreshRuntimeImageResponse{Event: ev})
		}); err != nil {
			return err
		}
	}
	return nil
}

// planRefresh validates a refresh and builds one command per agent of the
// tenant that reports the runtime.
func (s *service) planRefresh(req *controlplanev1.RefreshRuntimeImageRequest, by identity.Identity) ([]*store.Command, error) {
	if err := checkName("tenant", req.GetTenant()); err != nil {
		return nil, err
	}
	if err := checkName("runtime", req.GetRuntime()); err != nil {
		return nil, err
	}
	if req.GetImageDigest() != "" {
		if err := imageref.ValidateDigest(req.GetImageDigest()); err != nil {
			return nil, cperr.Invalid("image_digest: %v", err)
		}
	}
	if err := checkOptions(req.GetOptions()); err != nil {
		return nil, err
	}
	if !s.cfg.Fleet.KnownTenant(req.GetTenant()) {
		return nil, cperr.NotFound("tenant %s: no agent of it ever connected", limits.Quoted(req.GetTenant()))
	}
	if h, held := s.cfg.Fleet.Held(req.GetTenant()); held {
		return nil, cperr.Precondition("tenant %s is held (%s, by %s); release it first", limits.Quoted(req.GetTenant()), h.Reason, h.HeldBy)
	}
	pin, hasPin := s.cfg.Fleet.Pin(req.GetRuntime())
	r := dispatch.Request{Kind: controlplanev1.CommandKind_COMMAND_KIND_REFRESH, Runtime: req.GetRuntime(),
		Digest: req.GetImageDigest(), Options: req.GetOptions(), RequestedBy: by.ID}
	if hasPin {
		r.Repository = pin.Repository
	}
	if r.Digest == "" {
		if !hasPin {
			return nil, cperr.NotFound("runtime %s has no pin; promote one or give image_digest", limits.Quoted(req.GetRuntime()))
		}
		r.Digest = pin.Digest
	}
	return s.cfg.Dispatcher.Plan(req.GetTenant(), r)
}

// follow sends a command as stored, then every update, until it ends.
func (s *service) follow(ctx context.Context, id string, sub *pubsub.Subscription[dispatch.Update], send func(*controlplanev1.CommandEvent) error) error {
	c, err := s.cfg.Store.GetCommand(ctx, id)
	if err != nil {
		return s.status(err)
	}
	if store.Terminal(c.State) {
		// It may have finished between Issue and this read (a fast agent):
		// what the subscription already holds happened before, so it goes
		// first, and the stream still ends with the result.
		if err := sendQueued(sub, c, send); err != nil {
			return err
		}
		return send(snapshotEvent(c, ""))
	}
	if err := send(snapshotEvent(c, "")); err != nil {
		return err
	}
	told := c
	for {
		select {
		case <-ctx.Done():
			// A status, not OK: the caller's deadline or Ctrl-C ended this
			// stream, not the command.
			return s.status(ctx.Err())
		case u, ok := <-sub.C:
			if !ok {
				return s.status(cperr.Aborted("%v (command %s goes on)", sub.Err(), id))
			}
			// Updates queued before the snapshot was read, or repeated by
			// several doorbells, are not news: states only move forward.
			if u.Command != nil {
				if store.StateOrder(u.Command.State) <= store.StateOrder(told.State) || u.Command.UpdatedAt.Before(told.UpdatedAt) {
					continue
				}
				told = u.Command
			}
			if err := send(updateEvent(u)); err != nil {
				return err
			}
			if u.Command != nil && store.Terminal(u.Command.State) {
				return nil
			}
		}
	}
}

// sendQueued sends the updates already waiting in sub that precede the
// terminal snapshot final, skipping states that repeat or go back (a
// SENT published after the fast agent's ACKED).
func sendQueued(sub *pubsub.Subscription[dispatch.Update], final *store.Command, send func(*controlplanev1.CommandEvent) error) error {
	told := -1 // the order of the last state sent
	for {
		select {
		case u, ok := <-sub.C:
			if !ok {
				return nil
			}
			if c := u.Command; c != nil {
				if store.StateOrder(c.State) <= told || store.Terminal(c.State) || c.UpdatedAt.After(final.UpdatedAt) {
					continue
				}
				told = store.StateOrder(c.State)
			}
			if err := send(updateEvent(u)); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

func (s *service) WatchCommand(req *controlplanev1.WatchCommandRequest, stream controlplanev1.AdminService_WatchCommandServer) error {
	if err := checkID("command_id", req.GetCommandId(), true); err != nil {
		return s.status(err)
	}
	sub := s.cfg.Dispatcher.Watch(req.GetCommandId())
	defer sub.Close()
	return s.follow(stream.Context(), req.GetCommandId(), sub, func(ev *controlplanev1.CommandEvent) error {
		return stream.Send(&controlplanev1.WatchCommandResponse{Event: ev})
	})
}

func (s *service) GetRuntimePin(ctx context.Context, req *controlplanev1.GetRuntimePinRequest) (*controlplanev1.GetRuntimePinResponse, error) {
	if err := checkName("runtime", req.GetRuntime()); err != nil {
		return nil, s.status(err)
	}
	pin, err := s.cfg.Store.CurrentPin(ctx, req.GetRuntime())
	if err != nil {
		return nil, s.status(err)
	}
	resp := &controlplanev1.GetRuntimePinResponse{Pin: pinProto(pin)}
	if req.GetIncludeHistory() {
		hist, err := s.cfg.Store.PinHistory(ctx, req.GetRuntime(), 0)
		if err != nil {
			return nil, s.status(err)
		}
		for _, p := range hist[1:] {
			resp.History = append(resp.History, pinProto(p))
		}
	}
	return resp, nil
}

func (s *service) ListRuntimePins(ctx context.Context, _ *controlplanev1.ListRuntimePinsRequest) (*controlplanev1.ListRuntimePinsResponse, error) {
	pins, err := s.cfg.Store.ListPins(ctx)
	if err != nil {
		return nil, s.status(err)
	}
	resp := &controlplanev1.ListRuntimePinsResponse{}
	for _, p := range pins {
		resp.Pins = append(resp.Pins, pinProto(p))
	}
	return resp, nil
}

func (s *service) GetCommand(ctx context.Context, req *controlplanev1.GetCommandRequest) (*controlplanev1.GetCommandResponse, error) {
	if err := checkID("command_id", req.GetCommandId(), true); err != nil {
		return nil, s.status(err)
	}
	c, err := s.cfg.Store.GetCommand(ctx, req.GetCommandId())
	if err != nil {
		return nil, s.status(err)
	}
	resp := &controlplanev1.GetCommandResponse{Command: commandProto(c)}
	if req.GetIncludeEvents() {
		evs, err := s.cfg.Store.ListEvents(ctx, c.ID)
		if err != nil {
			return nil, s.status(err)
		}
		for _, ev := range evs {
			resp.Events = append(resp.Events, storedEventProto(ev))
		}
	}
	return resp, nil
}

const (
	defaultPageSize = 50
	maxPageSize     = 500
)

func (s *service) ListCommands(ctx context.Context, req *controlplanev1.ListCommandsRequest) (*controlplanev1.ListCommandsResponse, error) {
	f := store.CommandFilter{Tenant: req.GetTenant(), Runtime: req.GetRuntime(), RolloutID: req.GetRolloutId(), States: req.GetStates()}
	size, err := checkPageSize(req.GetPageSize(), defaultPageSize, maxPageSize)
	if err == nil {
		err = firstErr(checkOptionalName("tenant", f.Tenant), checkOptionalName("runtime", f.Runtime), checkID("rollout_id", f.RolloutID, false))
	}
	if err != nil {
		return nil, s.status(err)
	}
	if req.GetPageToken() != "" {
		seq, err := decodePageToken(req.GetPageToken())
		if err != nil {
			return nil, s.status(errBadPageToken)
		}
		f.BeforeSeq = seq
	}
	f.Limit = size + 1 // one more tells whether there is a next page
	cmds, err := s.cfg.Store.ListCommands(ctx, f)
	if err != nil {
		return nil, s.status(err)
	}
	resp := &controlplanev1.ListCommandsResponse{}
	if len(cmds) > size {
		cmds = cmds[:size]
		resp.NextPageToken = encodePageToken(cmds[size-1].Seq)
	}
	for _, c := range cmds {
		resp.Commands = append(resp.Commands, commandProto(c))
	}
	return resp, nil
}

func encodePageToken(seq int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte("seq:" + strconv.FormatInt(seq, 10)))
}

func decodePageToken(tok string) (int64, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) < 5 || string(b[:4]) != "seq:" {
		return 0, fmt.Errorf("bad page token")
	}
	seq, err := strconv.ParseInt(string(b[4:]), 10, 64)
	if err != nil || seq <= 0 {
		return 0, fmt.Errorf("bad page token")
	}
	return seq, nil
}

func (s *service) WatchAgents(req *controlplanev1.WatchAgentsRequest, stream controlplanev1.AdminService_WatchAgentsServer) error {
	if err := checkOptionalName("tenant", req.GetTenant()); err != nil {
		return s.status(err)
	}
	sub := s.cfg.Fleet.Watch() // before the snapshot, so no change falls between
	defer sub.Close()
	for _, a := range s.cfg.Fleet.Agents(req.GetTenant()) {
		if err := stream.Send(&controlplanev1.WatchAgentsResponse{Kind: controlplanev1.AgentEventKind_AGENT_EVENT_KIND_SNAPSHOT, Agent: agentProto(s.cfg.Fleet.View(a))}); err != nil {
			return err
		}
	}
	if err := stream.Send(&controlplanev1.WatchAgentsResponse{Kind: controlplanev1.AgentEventKind_AGENT_EVENT_KIND_SYNCED}); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return s.status(stream.Context().Err())
		case ev, ok := <-sub.C:
			if !ok {
				return s.status(cperr.Aborted("%v", sub.Err()))
			}
			if req.GetTenant() != "" && ev.Agent.Tenant != req.GetTenant() {
				continue
			}
			if err := stream.Send(&controlplanev1.WatchAgentsResponse{Kind: ev.Kind, Agent: agentProto(ev.Agent)}); err != nil {
				return err
			}
		}
	}
}

func (s *service) HoldTenant(ctx context.Context, req *controlplanev1.HoldTenantRequest) (*controlplanev1.HoldTenantResponse, error) {
	if err := firstErr(checkName("tenant", req.GetTenant()), checkReason(req.GetReason())); err != nil {
		return nil, s.status(err)
	}
	// A typo must not look like a hold: the tenant must be one the
	// control plane has seen.
	if !s.cfg.Fleet.KnownTenant(req.GetTenant()) {
		return nil, s.status(cperr.NotFound("tenant %s: no agent of it ever connected", limits.Quoted(req.GetTenant())))
	}
	h := store.Hold{Tenant: req.GetTenant(), Reason: req.GetReason(), HeldBy: caller(ctx).ID, HeldAt: s.cfg.Now()}
	if err := s.cfg.Fleet.Hold(ctx, h); err != nil {
		return nil, s.status(err)
	}
	return &controlplanev1.HoldTenantResponse{HeldAt: timestamppb.New(h.HeldAt)}, nil
}

func (s *service) ReleaseTenant(ctx context.Context, req *controlplanev1.ReleaseTenantRequest) (*controlplanev1.ReleaseTenantResponse, error) {
	if err := checkName("tenant", req.GetTenant()); err != nil {
		return nil, s.status(err)
	}
	// Idempotent, as a hold is: releasing a tenant that is not held
	// succeeds and says so.
	released, err := s.cfg.Fleet.Release(ctx, req.GetTenant())
	if err != nil {
		return nil, s.status(err)
	}
	return &controlplanev1.ReleaseTenantResponse{Released: released}, nil
}

func (s *service) DenyTenant(ctx context.Context, req *controlplanev1.DenyTenantRequest) (*controlplanev1.DenyTenantResponse, error) {
	if err := firstErr(checkName("tenant", req.GetTenant()), checkReason(req.GetReason())); err != nil {
		return nil, s.status(err)
	}
	n, err := s.cfg.Fleet.Deny(ctx, store.Denial{Kind: store.DenyTenant, Value: req.GetTenant(), Reason: req.GetReason(), DeniedBy: caller(ctx).ID, DeniedAt: s.cfg.Now()})
	if err != nil {
		return nil, s.status(err)
	}
	return &controlplanev1.DenyTenantResponse{Disconnected: uint32(n)}, nil
}

func (s *service) AllowTenant(ctx context.Context, req *controlplanev1.AllowTenantRequest) (*controlplanev1.AllowTenantResponse, error) {
	if err := checkName("tenant", req.GetTenant()); err != nil {
		return nil, s.status(err)
	}
	ok, err := s.cfg.Fleet.Allow(ctx, req.GetTenant())
	if err != nil {
		return nil, s.status(err)
	}
	if !ok {
		return nil, s.status(cperr.NotFound("tenant %s is not denied", limits.Quoted(req.GetTenant())))
	}
	return &controlplanev1.AllowTenantResponse{}, nil
}

func (s *service) DenyCertificate(ctx context.Context, req *controlplanev1.DenyCertificateRequest) (*controlplanev1.DenyCertificateResponse, error) {
	// identity's error repeats the whole serial; ours quotes a prefix.
	serial, err := identity.NormalizeSerial(req.GetSerial())
	if err != nil {
		return nil, s.status(cperr.Invalid("serial %s: want hex digits, optionally separated by colons", limits.Quoted(req.GetSerial())))
	}
	if err := checkReason(req.GetReason()); err != nil {
		return nil, s.status(err)
	}
	n, err := s.cfg.Fleet.Deny(ctx, store.Denial{Kind: store.DenySerial, Value: serial, Reason: req.GetReason(), DeniedBy: caller(ctx).ID, DeniedAt: s.cfg.Now()})
	if err != nil {
		return nil, s.status(err)
	}
	return &controlplanev1.DenyCertificateResponse{Disconnected: uint32(n)}, nil
}
