package main

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/molecule-ai/tenant-agent/agent/docker"
)

// stepLog records when each container's recreate journaled each step
// (the journal hook runs just before the step is taken), so a refresh's
// downtime window can be split into its phases and set beside what the
// other recreates were doing at the time.
type stepLog struct {
	mu sync.Mutex
	at map[string]map[docker.Step]time.Time
}

func newStepLog() *stepLog { return &stepLog{at: map[string]map[docker.Step]time.Time{}} }

func (l *stepLog) record(st docker.RecreateState) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.at[st.Name] == nil {
		l.at[st.Name] = map[docker.Step]time.Time{}
	}
	l.at[st.Name][st.Step] = time.Now()
	return nil
}

// windowPhases are the steps between the stop and the health gate, each
// lasting until the next one is journaled.
var windowPhases = []docker.Step{docker.StepRenameOld, docker.StepStop, docker.StepRenameNew, docker.StepStart}

// span is one container's step from its journaling to the next's.
type span struct{ from, to time.Time }

func (s span) overlap(o span) time.Duration {
	to, from := s.to, s.from
	if o.to.Before(to) {
		to = o.to
	}
	if o.from.After(from) {
		from = o.from
	}
	return max(to.Sub(from), 0)
}

// between is the span from step a to step b of a container's log, if both
// were journaled.
func between(at map[docker.Step]time.Time, a, b docker.Step) (span, bool) {
	f, ok1 := at[a]
	t, ok2 := at[b]
	return span{f, t}, ok1 && ok2 && !t.Before(f)
}

// window is a container's downtime window as the log sees it: from the
// first of its stop and renames to its health gate (the start returned).
func window(at map[docker.Step]time.Time) (span, bool) {
	from, ok := time.Time{}, false
	for _, s := range []docker.Step{docker.StepStop, docker.StepRenameOld, docker.StepRenameNew} {
		if t, has := at[s]; has && (!ok || t.Before(from)) {
			from, ok = t, true
		}
	}
	to, has := at[docker.StepHealthGate]
	return span{from, to}, ok && has
}

// phaseTable prints, over the containers of one refresh, the median time
// of each phase inside the window, and how much of the window other
// containers spent creating (the create call itself), swapping (their
// own windows), in their health gate, or removing their old container.
func (l *stepLog) phaseTable(label string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	phase := map[docker.Step][]time.Duration{}
	var windows []time.Duration
	others := map[string][]float64{}
	for name, at := range l.at {
		w, ok := window(at)
		if !ok {
			continue
		}
		windows = append(windows, w.to.Sub(w.from))
		for _, p := range windowPhases {
			if f, ok := at[p]; ok {
				phase[p] = append(phase[p], nextAfter(at, f).Sub(f))
			}
		}
		share := map[string]time.Duration{}
		for other, oat := range l.at {
			if other == name {
				continue
			}
			if s, ok := between(oat, docker.StepCreate, docker.StepConnect); ok {
				share["create"] += w.overlap(s)
			}
			if s, ok := window(oat); ok {
				share["swap"] += w.overlap(s)
			}
			if s, ok := between(oat, docker.StepHealthGate, docker.StepRemoveOld); ok {
				share["health gate"] += w.overlap(s)
			}
			if s, ok := between(oat, docker.StepRemoveOld, docker.StepDone); ok {
				share["remove"] += w.overlap(s)
			}
		}
		for k, d := range share {
			others[k] = append(others[k], d.Seconds()/w.to.Sub(w.from).Seconds())
		}
	}
	if len(windows) == 0 {
		return
	}
	fmt.Printf("| %s | %s |", label, ms(median(windows)))
	for _, p := range windowPhases {
		if len(phase[p]) == 0 {
			fmt.Print(" – |")
			continue
		}
		fmt.Printf(" %s |", ms(median(phase[p])))
	}
	for _, k := range []string{"create", "swap", "health gate", "remove"} {
		fmt.Printf(" %.2f |", meanOf(others[k], len(windows)))
	}
	fmt.Println()
}

// nextAfter is the first step journaled after t.
func nextAfter(at map[docker.Step]time.Time, t time.Time) time.Time {
	var next time.Time
	for _, u := range at {
		if u.After(t) && (next.IsZero() || u.Before(next)) {
			next = u
		}
	}
	if next.IsZero() {
		return t
	}
	return next
}

func median(ds []time.Duration) time.Duration {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// meanOf is the mean of xs over n values (the missing ones 0).
func meanOf(xs []float64, n int) float64 {
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(n)
}
