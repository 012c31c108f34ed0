package runner

import (
	"context"
	"log/slog"
	"sync"
	"time"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// Pull progress is logged when it crosses another tenth of the total, or
// after pullLogEvery without a line, whichever comes first: the executor
// reports up to four times a second, far too often for a log.
const (
	pullLogStep  = 10 // percent
	pullLogEvery = 30 * time.Second
)

// stepLog turns one command's progress reports into one info line per
// step (verifying, pull started, pull progress, pulled, and per container create,
// stop, swap, start, health gate, rollback, done), each with the command
// ID and the container's name; the reports themselves go to debug. The
// command's own end is logged by Runner.finish.
type stepLog struct {
	logger *slog.Logger
	now    func() time.Time

	mu     sync.Mutex // containers are recreated in parallel
	logged map[stepKey]bool
	began  map[string]time.Time // container -> its first step
	pull   pullLog
}

type stepKey struct {
	container string
	phase     tenantagentv1.CommandPhase
}

type pullLog struct {
	started, lastLine time.Time
	lastTenth         uint64
}

func newStepLog(logger *slog.Logger) *stepLog {
	return &stepLog{logger: logger, now: time.Now, logged: map[stepKey]bool{}, began: map[string]time.Time{}}
}

// stepNames are the info-level lines, by phase.
var stepNames = map[tenantagentv1.CommandPhase]string{
	tenantagentv1.CommandPhase_COMMAND_PHASE_VERIFYING:      "verifying the image's signature",
	tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING:        "pull started",
	tenantagentv1.CommandPhase_COMMAND_PHASE_PULLED:         "image pulled",
	tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING:       "creating the new container",
	tenantagentv1.CommandPhase_COMMAND_PHASE_STOPPING:       "stopping the old container",
	tenantagentv1.CommandPhase_COMMAND_PHASE_SWAPPING:       "swapping names",
	tenantagentv1.CommandPhase_COMMAND_PHASE_STARTING:       "starting the new container",
	tenantagentv1.CommandPhase_COMMAND_PHASE_HEALTH_GATE:    "waiting for the health gate",
	tenantagentv1.CommandPhase_COMMAND_PHASE_REMOVING_OLD:   "health gate passed; removing the old container",
	tenantagentv1.CommandPhase_COMMAND_PHASE_ROLLING_BACK:   "rolling back",
	tenantagentv1.CommandPhase_COMMAND_PHASE_CONTAINER_DONE: "container done",
	tenantagentv1.CommandPhase_COMMAND_PHASE_CLEANING_UP:    "cleaning up unused images",
}

// progress logs a progress report.
func (s *stepLog) progress(p *tenantagentv1.CommandProgress) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logger.Debug("progress", "phase", p.GetPhase(), "container", p.GetContainer(), "message", p.GetMessage(),
		"bytes", p.GetCurrentBytes(), "total_bytes", p.GetTotalBytes(), "layers", len(p.GetLayers()))
	now := s.now()
	k := stepKey{p.GetContainer(), p.GetPhase()}
	if p.GetPhase() == tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING && s.logged[k] {
		s.pullProgress(p, now)
		return
	}
	name, ok := stepNames[p.GetPhase()]
	if !ok || s.logged[k] {
		return
	}
	s.logged[k] = true
	args := []any{"message", p.GetMessage()}
	if c := p.GetContainer(); c != "" {
		if _, ok := s.began[c]; !ok {
			s.began[c] = now
		}
		args = append([]any{"container", c}, args...)
	}
	level := slog.LevelInfo
	switch p.GetPhase() {
	case tenantagentv1.CommandPhase_COMMAND_PHASE_PULLING:
		s.pull = pullLog{started: now, lastLine: now}
	case tenantagentv1.CommandPhase_COMMAND_PHASE_PULLED:
		args = append(args, "in", now.Sub(s.pull.started))
	case tenantagentv1.CommandPhase_COMMAND_PHASE_CONTAINER_DONE:
		if p.GetContainer() == "" {
			name = "nothing to recreate" // all containers already current
			break
		}
		outcome := tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED
		if s.logged[stepKey{p.GetContainer(), tenantagentv1.CommandPhase_COMMAND_PHASE_ROLLING_BACK}] {
			outcome = tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ROLLED_BACK
		}
		args = append(args, "outcome", outcome, "in", now.Sub(s.began[p.GetContainer()]))
	case tenantagentv1.CommandPhase_COMMAND_PHASE_ROLLING_BACK:
		level = slog.LevelWarn
	}
	s.logger.Log(context.Background(), level, name, args...)
}

// pullProgress logs a pull's bytes at each further tenth, or every
// pullLogEvery.
func (s *stepLog) pullProgress(p *tenantagentv1.CommandProgress, now time.Time) {
	total, cur := p.GetTotalBytes(), p.GetCurrentBytes()
	if total == 0 {
		return
	}
	tenth := min(cur*100/total, 100) / pullLogStep
	if tenth <= s.pull.lastTenth && now.Sub(s.pull.lastLine) < pullLogEvery {
		return
	}
	s.pull.lastTenth, s.pull.lastLine = max(tenth, s.pull.lastTenth), now
	s.logger.Info("pull progress", "percent", cur*100/total, "bytes", cur, "total_bytes", total, "elapsed", now.Sub(s.pull.started))
}

// done logs the containers of a result whose end no progress report
// logged (rolled back, failed, not attempted, or recovered after a crash).
func (s *stepLog) done(res *tenantagentv1.CommandResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range res.GetContainers() {
		if s.logged[stepKey{c.GetName(), tenantagentv1.CommandPhase_COMMAND_PHASE_CONTAINER_DONE}] {
			continue
		}
		level := slog.LevelInfo
		if c.GetError() != "" {
			level = slog.LevelWarn
		}
		args := []any{"container", c.GetName(), "outcome", c.GetOutcome()}
		if c.GetError() != "" {
			args = append(args, "error", c.GetError())
		}
		if began, ok := s.began[c.GetName()]; ok {
			args = append(args, "in", s.now().Sub(began))
		}
		s.logger.Log(context.Background(), level, "container done", args...)
	}
}
