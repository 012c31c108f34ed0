package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/tactl/progress"
)

// follower shows commands on a Board: each command's state changes and
// progress from its own stream (WatchCommand, or the refresh's), and its
// result line at the end.
type follower struct {
	a     *app
	c     controlplanev1.AdminServiceClient
	ctx   context.Context
	board progress.Board

	// byRollout: a rollout's stream says when each command ends (its
	// order is the order of the result lines); the commands' own watches
	// only show their progress.
	byRollout bool

	mu    sync.Mutex
	views map[string]*cmdView
	order []*cmdView
	wg    sync.WaitGroup
}

// cmdView is one command on the board.
type cmdView struct {
	id, tenant string
	kind       controlplanev1.CommandKind
	item       progress.Item

	// guarded by follower.mu
	state   controlplanev1.CommandState // the last state its stream told
	final   *controlplanev1.Command     // its snapshot once terminal and shown
	seen    *controlplanev1.Command     // its watch's terminal snapshot (byRollout)
	last    string                      // what its line says now
	waiting bool                        // the rollout said its agent is offline
	ended   bool                        // its item is done
	cancel  context.CancelFunc          // stops its watch
	watched chan struct{}               // closed when its watch returns
}

func newFollower(a *app, c controlplanev1.AdminServiceClient, ctx context.Context, board progress.Board) *follower {
	return &follower{a: a, c: c, ctx: ctx, board: board, views: map[string]*cmdView{}}
}

// view returns the command's view, creating it (and its item) if new.
func (f *follower) view(id, tenant string, kind controlplanev1.CommandKind) (*cmdView, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.views[id]; ok {
		return v, false
	}
	v := &cmdView{id: id, tenant: tenant, kind: kind, last: "issued"}
	name := tenant
	if kind == controlplanev1.CommandKind_COMMAND_KIND_PREFETCH {
		name = tenant + " (prefetch)"
	}
	v.item = f.board.Item(id, name)
	f.views[id] = v
	f.order = append(f.order, v)
	return v, true
}

// watch follows a command with WatchCommand until it ends, the watch is
// canceled, or the run's context ends.
func (f *follower) watch(v *cmdView) {
	ctx, cancel := context.WithCancel(f.ctx)
	f.mu.Lock()
	v.cancel, v.watched = cancel, make(chan struct{})
	f.mu.Unlock()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer close(v.watched)
		defer cancel()
		stream, err := f.c.WatchCommand(ctx, &controlplanev1.WatchCommandRequest{CommandId: v.id})
		if err != nil {
			return
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			if f.event(v, resp.GetEvent()) {
				return
			}
		}
	}()
}

// event shows one event of a command's own stream and reports whether
// the command ended.
func (f *follower) event(v *cmdView, ev *controlplanev1.CommandEvent) bool {
	switch e := ev.GetEvent().(type) {
	case *controlplanev1.CommandEvent_Command:
		cmd := e.Command
		f.mu.Lock()
		first := v.state == controlplanev1.CommandState_COMMAND_STATE_UNSPECIFIED
		v.state = cmd.GetState()
		if v.tenant == "" {
			v.tenant = cmd.GetTenant()
		}
		if terminal(cmd.GetState()) {
			if f.byRollout {
				v.seen = cmd
				f.mu.Unlock()
				return true
			}
			f.mu.Unlock()
			f.end(v, cmd)
			return true
		}
		v.last = stateText(cmd.GetState())
		f.mu.Unlock()
		if f.byRollout {
			if f.a.tty() {
				v.item.State(stateText(cmd.GetState()))
			}
			return false
		}
		text := stateText(cmd.GetState())
		if first && f.a.tty() {
			text += " (command " + cmd.GetCommandId() + ")"
		}
		v.item.State(text)
	case *controlplanev1.CommandEvent_Progress:
		step := stepOf(e.Progress)
		f.mu.Lock()
		v.last = progress.StepText(step)
		f.mu.Unlock()
		v.item.Progress(step)
	}
	return false
}

// end shows a command's result line (once) and stops its watch.
func (f *follower) end(v *cmdView, cmd *controlplanev1.Command) {
	f.mu.Lock()
	if v.ended {
		f.mu.Unlock()
		return
	}
	v.final, v.ended, v.state = cmd, true, cmd.GetState()
	if v.cancel != nil {
		v.cancel()
	}
	f.mu.Unlock()
	if cmd.GetKind() == controlplanev1.CommandKind_COMMAND_KIND_PREFETCH && cmd.GetState() == controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED && f.a.tty() {
		v.item.Remove()
		return
	}
	v.item.Done(outcomeOf(cmd), resultText(cmd))
}

// leaveWaiting ends a command the rollout left waiting for its agent.
func (f *follower) leaveWaiting(v *cmdView) {
	f.mu.Lock()
	if v.ended {
		f.mu.Unlock()
		return
	}
	v.ended, v.waiting = true, true
	if v.cancel != nil {
		v.cancel()
	}
	f.mu.Unlock()
	v.item.Done(progress.Neutral, fmt.Sprintf("pending: its agent is offline; the command waits for it (tactl watch %s)", v.id))
}

// detach ends every item still in flight with a line saying where it was
// left: the work goes on on the control plane.
func (f *follower) detach(why string) {
	f.mu.Lock()
	var open []*cmdView
	for _, v := range f.order {
		if !v.ended {
			v.ended = true
			open = append(open, v)
		}
	}
	f.mu.Unlock()
	for _, v := range open {
		v.item.Done(progress.Neutral, v.last+" ("+why+")")
	}
}

// settle waits, after a rollout's stream ended, for the commands it did
// not tell the end of: those an agent holds run to their end (their
// watches tell it); those still pending after grace are left waiting for
// their agents.
func (f *follower) settle(grace time.Duration) {
	deadline := time.Now().Add(grace)
	for f.ctx.Err() == nil {
		f.mu.Lock()
		var open, seen []*cmdView
		busy := false
		for _, v := range f.order {
			switch {
			case v.ended:
			case v.seen != nil:
				seen = append(seen, v)
			default:
				open = append(open, v)
				if !v.waiting && v.state != controlplanev1.CommandState_COMMAND_STATE_PENDING && v.watched != nil {
					select {
					case <-v.watched:
					default:
						busy = true
					}
				}
			}
		}
		f.mu.Unlock()
		for _, v := range seen {
			f.end(v, v.seen)
		}
		if len(open) == 0 {
			return
		}
		if !busy && time.Now().After(deadline) {
			for _, v := range open {
				f.leaveWaiting(v)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// failed reports whether a refresh command the follower saw did not
// succeed (prefetches do not count: the refresh pulls again), and
// whether any is still not done.
func (f *follower) failed() (failed, open bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, v := range f.order {
		if v.final == nil {
			open = true
			continue
		}
		if v.final.GetKind() != controlplanev1.CommandKind_COMMAND_KIND_PREFETCH && v.final.GetState() != controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
			failed = true
		}
	}
	return failed, open
}

func (f *follower) stopWatches() {
	f.mu.Lock()
	for _, v := range f.order {
		if v.cancel != nil {
			v.cancel()
		}
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func terminal(s controlplanev1.CommandState) bool {
	return s >= controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED
}

func outcomeOf(c *controlplanev1.Command) progress.Outcome {
	if c.GetState() == controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
		return progress.OK
	}
	return progress.Failed
}

func stateText(s controlplanev1.CommandState) string {
	switch s {
	case controlplanev1.CommandState_COMMAND_STATE_PENDING:
		return "pending"
	case controlplanev1.CommandState_COMMAND_STATE_SENT:
		return "sent"
	case controlplanev1.CommandState_COMMAND_STATE_ACKED:
		return "acked"
	case controlplanev1.CommandState_COMMAND_STATE_RUNNING:
		return "running"
	}
	return stateWord(s)
}

// resultText is a finished command's result line.
func resultText(c *controlplanev1.Command) string {
	r := c.GetResult()
	why := commandError(c)
	// The phase leads the reason unless the agent's error names it already.
	if p := r.GetFailedPhase(); p != tenantagentv1.CommandPhase_COMMAND_PHASE_UNSPECIFIED && why != "" && !strings.Contains(why, phaseName(p)+":") {
		why = phaseName(p) + ": " + why
	}
	switch c.GetState() {
	case controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED:
		var parts []string
		if c.GetKind() == controlplanev1.CommandKind_COMMAND_KIND_PREFETCH {
			return "prefetched" + pullText(r) + signatureText(r)
		}
		recreated, current := 0, 0
		var downtime time.Duration
		for _, ct := range r.GetContainers() {
			switch ct.GetOutcome() {
			case tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED:
				recreated++
				downtime = max(downtime, ct.GetDowntime().AsDuration())
			case tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ALREADY_CURRENT:
				current++
			}
		}
		parts = append(parts, fmt.Sprintf("%d recreated", recreated))
		if current > 0 {
			parts = append(parts, fmt.Sprintf("%d already current", current))
		}
		s := "succeeded: " + strings.Join(parts, ", ")
		if recreated > 0 {
			s += fmt.Sprintf(" (downtime up to %s)", seconds(downtime))
		}
		return s + pullText(r) + signatureText(r)
	case controlplanev1.CommandState_COMMAND_STATE_PARTIAL:
		moved, total := 0, len(r.GetContainers())
		for _, ct := range r.GetContainers() {
			if ct.GetOutcome() == tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED || ct.GetOutcome() == tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ALREADY_CURRENT {
				moved++
			}
		}
		return fmt.Sprintf("partial: %d of %d containers on the image: %s", moved, total, dash(why))
	}
	s := stateWord(c.GetState())
	if why != "" {
		s += ": " + why
	}
	return s
}

func pullText(r *tenantagentv1.CommandResult) string {
	if r.GetPulledBytes() == 0 {
		return ""
	}
	return fmt.Sprintf("; pulled %s in %s", progress.Bytes(r.GetPulledBytes()), seconds(r.GetPullDuration().AsDuration()))
}

// signatureText tells how the agent checked the image's signature, if it
// has a signature policy: who signed it, or (warn mode) what was wrong.
func signatureText(r *tenantagentv1.CommandResult) string {
	sig := r.GetSignature()
	switch {
	case sig == nil:
		return ""
	case sig.GetVerified():
		return "; signed by " + sig.GetSignedBy()
	}
	return "; NOT VERIFIED (" + sig.GetMode() + " mode): " + sig.GetProblem()
}

func seconds(d time.Duration) string {
	return fmt.Sprintf("%.1fs", d.Seconds())
}

func phaseName(p tenantagentv1.CommandPhase) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(p.String(), "COMMAND_PHASE_")), "_", " ")
}

// stepOf is an agent's progress report as a step on the board.
func stepOf(p *tenantagentv1.CommandProgress) progress.Step {
	c := p.GetContainer()
	on := func(s string) string {
		if c == "" {
			return s
		}
		return c + ": " + s
	}
	switch p.GetPhase() {
	case tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING:
		s := progress.Step{Pull: true, Current: p.GetCurrentBytes(), Total: p.GetTotalBytes(), Text: "pulling"}
		for _, l := range p.GetLayers() {
			s.Layers = append(s.Layers, progress.Layer{ID: l.GetId(), Status: l.GetStatus(), Current: l.GetCurrentBytes(), Total: l.GetTotalBytes()})
		}
		return s
	case tenantagentv1.CommandPhase_COMMAND_PHASE_QUEUED:
		return progress.Step{Text: "queued behind an earlier command of the runtime"}
	case tenantagentv1.CommandPhase_COMMAND_PHASE_VERIFYING:
		return progress.Step{Text: "verifying the image's signature"}
	case tenantagentv1.CommandPhase_COMMAND_PHASE_PULLED:
		return progress.Step{Text: "pulled"}
	case tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING:
		return progress.Step{Text: on("creating the new container")}
	case tenantagentv1.CommandPhase_COMMAND_PHASE_STOPPING:
		return progress.Step{Text: on("stopping the old container")}
	case tenantagentv1.CommandPhase_COMMAND_PHASE_SWAPPING:
		return progress.Step{Text: on("swapping names")}
	case tenantagentv1.CommandPhase_COMMAND_PHASE_STARTING:
		return progress.Step{Text: on("starting the new container")}
	case tenantagentv1.CommandPhase_COMMAND_PHASE_HEALTH_GATE:
		return progress.Step{Text: on("waiting for the health gate")}
	case tenantagentv1.CommandPhase_COMMAND_PHASE_REMOVING_OLD:
		return progress.Step{Text: on("removing the old container")}
	case tenantagentv1.CommandPhase_COMMAND_PHASE_ROLLING_BACK:
		return progress.Step{Text: on("rolling back")}
	case tenantagentv1.CommandPhase_COMMAND_PHASE_CONTAINER_DONE:
		return progress.Step{Text: on("done")}
	case tenantagentv1.CommandPhase_COMMAND_PHASE_CLEANING_UP:
		return progress.Step{Text: "removing images no container uses"}
	}
	return progress.Step{Text: on(p.GetMessage())}
}

// streamEnd classifies why a stream's Recv failed: the end of the
// stream, Ctrl-C, --timeout, or an error.
func (a *app) streamEnd(ctx context.Context, err error) (eof bool, cause error) {
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	if c := context.Cause(ctx); c != nil && (errors.Is(c, errInterrupted) || errors.Is(c, errTimeout)) {
		return false, c
	}
	// The server can see the deadline a moment before this process does.
	if a.timeout > 0 && status.Code(err) == codes.DeadlineExceeded {
		return false, errTimeout
	}
	return false, err
}

// leave prints how to re-attach after Ctrl-C or --timeout and returns the
// exit status.
func (a *app) leave(cause error, what, id string) error {
	hint := ""
	if id != "" {
		hint = fmt.Sprintf("; %s %s goes on on the control plane: re-attach with: tactl watch %s", what, id, id)
	}
	if errors.Is(cause, errTimeout) {
		fmt.Fprintf(a.io.Stderr, "tactl: gave up waiting after %s (--timeout)%s\n", a.timeout, hint)
		return silentExit(ExitFailed)
	}
	fmt.Fprintf(a.io.Stderr, "tactl: interrupted%s\n", hint)
	return silentExit(ExitInterrupted)
}
