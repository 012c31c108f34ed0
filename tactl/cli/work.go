package cli

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/imageref"
	"github.com/molecule-ai/tenant-agent/tactl/progress"
)

// settleGrace is how long, after a rollout's stream ended, tactl waits
// for commands still pending before it leaves them waiting for their
// agents.
const settleGrace = 2 * time.Second

func (a *app) board(layers bool) progress.Board {
	return progress.New(progress.Options{Out: a.io.Stdout, TTY: a.tty(), Layers: layers})
}

func (a *app) promoteCommand() *cobra.Command {
	req := &controlplanev1.PromoteRuntimeImageRequest{Options: &controlplanev1.RolloutOptions{}}
	var detach bool
	cmd := &cobra.Command{
		Use:   "promote RUNTIME IMAGE_REF",
		Short: "Record a runtime's new pin and follow its rollout to the fleet",
		Long: `Record IMAGE_REF (repository@sha256:<64 hex>; tags are refused) as RUNTIME's pin
and roll it out: optionally a prefetch everywhere, canary tenants one at a
time, then at most --max-parallel tenants at once, halting after --halt-after
failures.

On a terminal: one overall bar (tenants succeeded, failed and waiting; the
phase as its label) and one bar per tenant in flight (the pull's bytes, then
the recreate step); each finished tenant becomes one result line. Elsewhere:
status lines. -o json: the rollout's events, one JSON object per line.

The rollout goes on if tactl stops (Ctrl-C, --detach, --timeout): tactl
watch ROLLOUT_ID re-attaches. Exit status 0 only if every tenant's refresh
succeeded; 1 if any failed or the rollout halted.`,
		Example: `  tactl promote codex registry.example/molecule-ai/workspace-template-codex@sha256:<64 hex> \
      --prefetch --canary agents-team --max-parallel 20 --halt-after 3 --git-sha 4f2a9c1 --notes "promoted by CI"`,
		Args:              args(cobra.ExactArgs(2)),
		ValidArgsFunction: a.completeRuntimes,
		RunE: func(cmd *cobra.Command, argv []string) error {
			if err := a.wantOutput(cmd, "json"); err != nil {
				return err
			}
			req.Runtime, req.ImageRef = argv[0], argv[1]
			if _, err := imageref.Parse(req.ImageRef); err != nil {
				return usagef("IMAGE_REF: %v (want repository@sha256:<64 hex>)", err)
			}
			return a.promote(req, detach)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&req.Options.Prefetch, "prefetch", false, "pull the image on every tenant first; recreate only after all pulls")
	f.StringArrayVar(&req.Options.CanaryTenants, "canary", nil, "refresh this tenant first, alone (repeatable, in order); the fleet starts only if all succeed")
	f.Uint32Var(&req.Options.MaxParallelTenants, "max-parallel", 0, "tenants refreshed at once (0: the control plane's default)")
	f.Uint32Var(&req.Options.HaltAfterFailures, "halt-after", 0, "stop starting tenants after this many failures (0: never)")
	f.Uint32Var(&req.Options.MaxParallelContainers, "max-parallel-containers", 0,
		"containers each agent recreates at once after its canary container (0: the agent's --max-parallel-recreates, which this cannot exceed; 1: one at a time)")
	f.StringVar(&req.GitSha, "git-sha", "", "the commit the image was built from, recorded with the pin")
	f.StringVar(&req.Notes, "notes", "", "free text recorded with the pin")
	f.BoolVar(&detach, "detach", false, "print the rollout's ID once the pin is recorded and leave it running")
	cmd.RegisterFlagCompletionFunc("canary", a.completeTenants)
	return cmd
}

func (a *app) promote(req *controlplanev1.PromoteRuntimeImageRequest, detach bool) error {
	c, err := a.dialer.client()
	if err != nil {
		return err
	}
	ctx, cancel := a.context()
	defer cancel()
	stream, err := c.PromoteRuntimeImage(ctx, req)
	if err != nil {
		return rpcError(err, "PromoteRuntimeImage", a.dialer)
	}
	first, err := stream.Recv()
	if err != nil {
		if _, cause := a.streamEnd(ctx, err); cause == errInterrupted || cause == errTimeout {
			return a.leave(cause, "", "")
		}
		return rpcError(err, "PromoteRuntimeImage", a.dialer)
	}
	id := first.GetEvent().GetRolloutId()
	if detach {
		return a.detached("rollout", id)
	}
	if a.output.value == "json" {
		return rolloutJSON(a, ctx, id, first, stream.Recv, func(*controlplanev1.PromoteRuntimeImageResponse) *controlplanev1.Rollout { return nil })
	}
	r := newRolloutView(a, c, ctx, a.board(false), id)
	r.board.Println(fmt.Sprintf("rollout %s: promoting %s to %s", id, req.GetRuntime(), req.GetImageRef()))
	r.event(first.GetEvent())
	return r.follow(func() (*controlplanev1.RolloutEvent, *controlplanev1.Rollout, error) {
		resp, err := stream.Recv()
		return resp.GetEvent(), nil, err
	})
}

// detached prints the ID of work left running, and how to follow it.
func (a *app) detached(what, id string) error {
	fmt.Fprintln(a.io.Stdout, id)
	fmt.Fprintf(a.io.Stderr, "%s %s goes on on the control plane: follow it with: tactl watch %s\n", what, id, id)
	return nil
}

// rolloutMessage is a response of a rollout's stream.
type rolloutMessage interface {
	proto.Message
	GetEvent() *controlplanev1.RolloutEvent
}

// rolloutJSON prints a rollout's stream as JSON lines and exits by how it
// ended: 0 only if it completed with no tenant failed.
func rolloutJSON[T rolloutMessage](a *app, ctx context.Context, id string, first T, recv func() (T, error), stored func(T) *controlplanev1.Rollout) error {
	var end controlplanev1.RolloutEventKind
	var failed uint32
	var state controlplanev1.RolloutState
	msg := first
	for {
		if err := jsonLine(a.io.Stdout, msg); err != nil {
			return err
		}
		ev := msg.GetEvent()
		if ev.GetCounts() != nil {
			failed = ev.GetCounts().GetFailed()
		}
		switch ev.GetKind() {
		case controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_ABORTED:
			end = ev.GetKind()
		}
		if ro := stored(msg); ro != nil {
			state = ro.GetState()
			if ro.GetCounts() != nil {
				failed = ro.GetCounts().GetFailed()
			}
		}
		next, err := recv()
		if err != nil {
			eof, cause := a.streamEnd(ctx, err)
			if !eof {
				if cause == errInterrupted || cause == errTimeout {
					return a.leave(cause, "rollout", id)
				}
				return rpcError(err, "following rollout "+id, a.dialer)
			}
			break
		}
		msg = next
	}
	switch {
	case end == controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED || (end == 0 && state == controlplanev1.RolloutState_ROLLOUT_STATE_COMPLETED):
		if failed > 0 {
			return silentExit(ExitFailed)
		}
		return nil
	case end != 0 || state == controlplanev1.RolloutState_ROLLOUT_STATE_HALTED || state == controlplanev1.RolloutState_ROLLOUT_STATE_ABORTED:
		return silentExit(ExitFailed)
	}
	return failf("the rollout's stream ended before the rollout did; follow it with: tactl watch %s", id)
}

// rolloutView follows a rollout on a board: its events, the tally, and
// each of its commands through WatchCommand.
type rolloutView struct {
	*follower
	id     string
	mu     sync.Mutex
	phase  string
	counts progress.Counts
	end    *controlplanev1.RolloutEvent
	stored *controlplanev1.Rollout
}

func newRolloutView(a *app, c controlplanev1.AdminServiceClient, ctx context.Context, board progress.Board, id string) *rolloutView {
	f := newFollower(a, c, ctx, board)
	f.byRollout = true
	return &rolloutView{follower: f, id: id}
}

func (r *rolloutView) label() string {
	if r.phase == "" {
		return "rollout"
	}
	return r.phase
}

// event shows one rollout event.
func (r *rolloutView) event(ev *controlplanev1.RolloutEvent) {
	if ev == nil {
		return
	}
	r.mu.Lock()
	if n := ev.GetCounts(); n != nil {
		r.counts = progress.Counts{Total: int(n.GetTenants()), Succeeded: int(n.GetSucceeded()), Failed: int(n.GetFailed()), Skipped: int(n.GetSkipped())}
	}
	if ev.GetKind() == controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_PHASE_STARTED {
		r.phase = phaseWord(ev.GetPhase())
	}
	label, counts := r.label(), r.counts
	r.mu.Unlock()
	if ev.GetCounts() != nil {
		r.board.Overall(label, counts)
	}
	kind := controlplanev1.CommandKind_COMMAND_KIND_REFRESH
	if ev.GetPhase() == controlplanev1.RolloutPhase_ROLLOUT_PHASE_PREFETCH {
		kind = controlplanev1.CommandKind_COMMAND_KIND_PREFETCH
	}
	switch ev.GetKind() {
	case controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_PIN_RECORDED:
		r.board.Println(ev.GetMessage())
	case controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_PHASE_STARTED:
		r.board.Println(label + ": " + ev.GetMessage())
	case controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_ISSUED:
		r.command(ev, kind)
	case controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMMAND_UPDATED:
		if ev.GetCommandId() == "" {
			r.board.Println(ev.GetTenant() + ": " + ev.GetMessage())
			return
		}
		v := r.command(ev, kind)
		switch {
		case terminal(ev.GetState()):
			r.ended(v)
		case ev.GetState() == controlplanev1.CommandState_COMMAND_STATE_PENDING && strings.HasPrefix(ev.GetMessage(), "agent offline"):
			r.leaveWaiting(v)
		case r.a.tty():
			v.item.State(stateText(ev.GetState()))
		}
	case controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_TENANT_SKIPPED:
		r.board.Println(ev.GetTenant() + " skipped: " + ev.GetMessage())
	case controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_RESUMED:
		r.board.Println("resumed: " + ev.GetMessage())
	case controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_HALTED, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_ABORTED:
		r.mu.Lock()
		r.end = ev
		r.mu.Unlock()
	}
}

// command returns the view of the event's command, showing it and
// watching its progress if it is new.
func (r *rolloutView) command(ev *controlplanev1.RolloutEvent, kind controlplanev1.CommandKind) *cmdView {
	v, fresh := r.view(ev.GetCommandId(), ev.GetTenant(), kind)
	if fresh {
		v.item.State("issued (command " + ev.GetCommandId() + ")")
		r.watch(v)
	}
	return v
}

// ended shows the result line of a command the rollout says ended, with
// the command as stored (its watch's last snapshot, or GetCommand).
func (r *rolloutView) ended(v *cmdView) {
	r.follower.mu.Lock()
	cmd, done := v.seen, v.ended
	r.follower.mu.Unlock()
	if done {
		return
	}
	if cmd == nil {
		ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
		resp, err := r.c.GetCommand(ctx, &controlplanev1.GetCommandRequest{CommandId: v.id})
		cancel()
		if err != nil {
			r.follower.mu.Lock()
			v.ended = true
			r.follower.mu.Unlock()
			v.item.Done(progress.Failed, fmt.Sprintf("ended; cannot read its result: %v", err))
			return
		}
		cmd = resp.GetCommand()
	}
	r.follower.end(v, cmd)
}

// endState is how the rollout ended, from its last event or its stored
// record: "completed", "halted", "aborted", or "" if not known to have
// ended.
func (r *rolloutView) endState() (state, message string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.end != nil {
		return strings.ToLower(strings.TrimPrefix(r.end.GetKind().String(), "ROLLOUT_EVENT_KIND_")), r.end.GetMessage()
	}
	if s := r.stored; s != nil && s.GetState() != controlplanev1.RolloutState_ROLLOUT_STATE_RUNNING && s.GetState() != controlplanev1.RolloutState_ROLLOUT_STATE_UNSPECIFIED {
		return rolloutStateWord(s.GetState()), s.GetMessage()
	}
	return "", ""
}

// follow reads the rollout's stream to its end, then waits for the
// commands, closes the board and returns the exit status.
func (r *rolloutView) follow(recv func() (*controlplanev1.RolloutEvent, *controlplanev1.Rollout, error)) error {
	for {
		if state, _ := r.endState(); state != "" {
			break
		}
		ev, stored, err := recv()
		if err != nil {
			eof, cause := r.a.streamEnd(r.ctx, err)
			if eof {
				break
			}
			r.stopWatches()
			if cause == errInterrupted || cause == errTimeout {
				r.detach("goes on")
				r.board.Close("")
				return r.a.leave(cause, "rollout", r.id)
			}
			r.detach("not followed any more")
			r.board.Close("")
			e := rpcError(err, "following rollout "+r.id, r.a.dialer)
			return fmt.Errorf("%w; follow it again with: tactl watch %s", e, r.id)
		}
		if stored != nil {
			r.mu.Lock()
			r.stored = stored
			r.mu.Unlock()
		}
		r.event(ev)
	}
	r.settle(settleGrace)
	if cause := context.Cause(r.ctx); cause == errInterrupted || cause == errTimeout {
		r.stopWatches()
		r.detach("goes on")
		r.board.Close("")
		return r.a.leave(cause, "rollout", r.id)
	}
	r.stopWatches()
	state, message := r.endState()
	failed, _ := r.failed()
	r.mu.Lock()
	counts := r.counts
	r.mu.Unlock()
	if state == "" {
		r.detach("not followed any more")
		r.board.Close("")
		return failf("the rollout's stream ended before the rollout did; follow it with: tactl watch %s", r.id)
	}
	message = strings.TrimPrefix(message, state+": ")
	r.board.Close(fmt.Sprintf("rollout %s %s: %s", r.id, state, message))
	if state != "completed" || failed || counts.Failed > 0 {
		return silentExit(ExitFailed)
	}
	return nil
}

func (a *app) refreshCommand() *cobra.Command {
	req := &controlplanev1.RefreshRuntimeImageRequest{}
	var detach bool
	var parallel uint32
	cmd := &cobra.Command{
		Use:   "refresh TENANT RUNTIME [--digest sha256:...]",
		Short: "Refresh one tenant's runtime (to its pin, or --digest) and follow the pull and recreate",
		Long: `Refresh TENANT's RUNTIME containers to the runtime's pin, or to --digest, and
follow it: on a terminal a bar per image layer while the agent pulls, then the
recreate step; each command's result as one line. Exit status 0 only if it
succeeded; 1 if it failed, rolled back, was partial or expired.`,
		Args:              args(cobra.ExactArgs(2)),
		ValidArgsFunction: a.completeTenantRuntime,
		RunE: func(cmd *cobra.Command, argv []string) error {
			if err := a.wantOutput(cmd, "json"); err != nil {
				return err
			}
			req.Tenant, req.Runtime = argv[0], argv[1]
			if parallel > 0 {
				req.Options = &tenantagentv1.RefreshOptions{MaxParallelContainers: parallel}
			}
			if req.ImageDigest != "" {
				if err := imageref.ValidateDigest(req.ImageDigest); err != nil {
					return usagef("--digest: %v", err)
				}
			}
			return a.refresh(req, detach)
		},
	}
	cmd.Flags().StringVar(&req.ImageDigest, "digest", "", "move to this digest (sha256:<64 hex>) instead of the runtime's pin")
	cmd.Flags().BoolVar(&detach, "detach", false, "print the command's ID once it is journaled and leave it running")
	cmd.Flags().Uint32Var(&parallel, "max-parallel-containers", 0,
		"containers recreated at once after the canary container (0: the agent's --max-parallel-recreates, which this cannot exceed; 1: one at a time)")
	return cmd
}

func (a *app) completeTenantRuntime(cmd *cobra.Command, argv []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	switch len(argv) {
	case 0:
		return a.completeTenants(cmd, argv, toComplete)
	case 1:
		return a.completeRuntimes(cmd, argv, toComplete)
	}
	return nil, cobra.ShellCompDirectiveNoFileComp
}

func (a *app) refresh(req *controlplanev1.RefreshRuntimeImageRequest, detach bool) error {
	c, err := a.dialer.client()
	if err != nil {
		return err
	}
	ctx, cancel := a.context()
	defer cancel()
	stream, err := c.RefreshRuntimeImage(ctx, req)
	if err != nil {
		return rpcError(err, "RefreshRuntimeImage", a.dialer)
	}
	return a.followCommands(ctx, c, "RefreshRuntimeImage", detach, func() (*controlplanev1.CommandEvent, error) {
		resp, err := stream.Recv()
		return resp.GetEvent(), err
	}, func(ev *controlplanev1.CommandEvent) string {
		cmd := ev.GetCommand()
		return fmt.Sprintf("refreshing %s's %s to %s (command %s)", cmd.GetTenant(), cmd.GetRuntime(), cmd.GetImageDigest(), cmd.GetCommandId())
	}, func(ev *controlplanev1.CommandEvent) error {
		return jsonLine(a.io.Stdout, &controlplanev1.RefreshRuntimeImageResponse{Event: ev})
	})
}

// followCommands shows a stream of command events (a refresh's, or
// WatchCommand's) and returns the exit status: 0 only if every command
// it told of succeeded.
func (a *app) followCommands(ctx context.Context, c controlplanev1.AdminServiceClient, what string, detach bool,
	recv func() (*controlplanev1.CommandEvent, error), header func(*controlplanev1.CommandEvent) string, printJSONEvent func(*controlplanev1.CommandEvent) error) error {
	var f *follower
	if a.output.value != "json" && !detach {
		f = newFollower(a, c, ctx, a.board(true))
	}
	var current *cmdView
	lastID := ""
	var finals []*controlplanev1.Command
	for {
		ev, err := recv()
		if err != nil {
			eof, cause := a.streamEnd(ctx, err)
			if eof {
				break
			}
			if f != nil {
				f.detach("goes on")
				f.board.Close("")
			}
			if cause == errInterrupted || cause == errTimeout {
				return a.leave(cause, "command", lastID)
			}
			return rpcError(err, what, a.dialer)
		}
		id := ev.GetCommand().GetCommandId()
		if id == "" {
			id = ev.GetProgress().GetCommandId()
		}
		if id != "" && id != lastID && ev.GetCommand() != nil {
			lastID = id
			if detach {
				return a.detached("command", id)
			}
			if f != nil {
				f.board.Println(header(ev))
				current, _ = f.view(id, ev.GetCommand().GetTenant(), ev.GetCommand().GetKind())
			}
		}
		if cmd := ev.GetCommand(); cmd != nil && terminal(cmd.GetState()) {
			finals = append(finals, cmd)
		}
		if f == nil {
			if err := printJSONEvent(ev); err != nil {
				return err
			}
			continue
		}
		if current != nil {
			f.event(current, ev)
		}
	}
	ok := len(finals) > 0
	for _, cmd := range finals {
		if cmd.GetState() != controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
			ok = false
		}
	}
	if f != nil {
		if len(finals) == 0 {
			f.detach("not followed any more")
		}
		f.board.Close("")
	}
	if len(finals) == 0 {
		if lastID == "" {
			return failf("%s: the stream ended before telling of a command", what)
		}
		return failf("the stream ended before command %s did; follow it with: tactl watch %s", lastID, lastID)
	}
	if !ok {
		return silentExit(ExitFailed)
	}
	return nil
}

func (a *app) watchCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "watch COMMAND_ID|ROLLOUT_ID",
		Short: "Re-attach to a command (c-...) or a rollout (r-...) and follow it to its end",
		Long: `Follow a command (c-...) or a rollout (r-...) from where it is to its end, as
refresh and promote do, and exit as they would: 0 only if it succeeded.`,
		Args: args(func(cmd *cobra.Command, argv []string) error {
			if err := cobra.ExactArgs(1)(cmd, argv); err != nil {
				return err
			}
			if !strings.HasPrefix(argv[0], "c-") && !strings.HasPrefix(argv[0], "r-") {
				return fmt.Errorf("%q is neither a command ID (c-...) nor a rollout ID (r-...)", argv[0])
			}
			return nil
		}),
		ValidArgsFunction: a.completeRollouts,
		RunE: func(cmd *cobra.Command, argv []string) error {
			c, ctx, cancel, err := a.connect(cmd, "json")
			if err != nil {
				return err
			}
			defer cancel()
			id := argv[0]
			if strings.HasPrefix(id, "r-") {
				return a.watchRollout(ctx, c, id)
			}
			stream, err := c.WatchCommand(ctx, &controlplanev1.WatchCommandRequest{CommandId: id})
			if err != nil {
				return rpcError(err, "WatchCommand", a.dialer)
			}
			return a.followCommands(ctx, c, "WatchCommand", false, func() (*controlplanev1.CommandEvent, error) {
				resp, err := stream.Recv()
				return resp.GetEvent(), err
			}, func(ev *controlplanev1.CommandEvent) string {
				cmd := ev.GetCommand()
				return fmt.Sprintf("command %s: %s %s's %s to %s", cmd.GetCommandId(), kindWord(cmd.GetKind()), cmd.GetTenant(), cmd.GetRuntime(), cmd.GetImageDigest())
			}, func(ev *controlplanev1.CommandEvent) error {
				return jsonLine(a.io.Stdout, &controlplanev1.WatchCommandResponse{Event: ev})
			})
		},
	}
}

func (a *app) watchRollout(ctx context.Context, c controlplanev1.AdminServiceClient, id string) error {
	stream, err := c.WatchRollout(ctx, &controlplanev1.WatchRolloutRequest{RolloutId: id})
	if err != nil {
		return rpcError(err, "WatchRollout", a.dialer)
	}
	first, err := stream.Recv()
	if err != nil {
		if _, cause := a.streamEnd(ctx, err); cause == errInterrupted || cause == errTimeout {
			return a.leave(cause, "rollout", id)
		}
		return rpcError(err, "WatchRollout", a.dialer)
	}
	if a.output.value == "json" {
		return rolloutJSON(a, ctx, id, first, stream.Recv, (*controlplanev1.WatchRolloutResponse).GetRollout)
	}
	r := newRolloutView(a, c, ctx, a.board(false), id)
	ro := first.GetRollout()
	r.stored = ro
	r.board.Println(fmt.Sprintf("rollout %s: %s to %s, %s", id, ro.GetRuntime(), ro.GetImageRef(), rolloutStateWord(ro.GetState())))
	if n := ro.GetCounts(); n != nil {
		r.counts = progress.Counts{Total: int(n.GetTenants()), Succeeded: int(n.GetSucceeded()), Failed: int(n.GetFailed()), Skipped: int(n.GetSkipped())}
		r.board.Overall(r.label(), r.counts)
	}
	// The commands it issued before this watch: finished ones as result
	// lines, the others followed.
	cmds, _, err := pages(0, func(token string, _ int) ([]*controlplanev1.Command, string, error) {
		resp, err := c.ListCommands(ctx, &controlplanev1.ListCommandsRequest{RolloutId: id, PageSize: 500, PageToken: token})
		return resp.GetCommands(), resp.GetNextPageToken(), err
	})
	if err != nil {
		r.board.Close("")
		return rpcError(err, "ListCommands", a.dialer)
	}
	for i := len(cmds) - 1; i >= 0; i-- { // oldest first
		cmd := cmds[i]
		if terminal(cmd.GetState()) && cmd.GetKind() == controlplanev1.CommandKind_COMMAND_KIND_PREFETCH && cmd.GetState() == controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
			continue
		}
		v, fresh := r.view(cmd.GetCommandId(), cmd.GetTenant(), cmd.GetKind())
		if !fresh {
			continue
		}
		if terminal(cmd.GetState()) {
			r.follower.end(v, cmd)
			continue
		}
		v.item.State(stateText(cmd.GetState()) + " (command " + cmd.GetCommandId() + ")")
		r.watch(v)
	}
	r.event(first.GetEvent())
	return r.follow(func() (*controlplanev1.RolloutEvent, *controlplanev1.Rollout, error) {
		resp, err := stream.Recv()
		return resp.GetEvent(), resp.GetRollout(), err
	})
}
