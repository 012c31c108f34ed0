// Package progress draws the progress of tactl's work: bars on a terminal
// (mpb), status lines elsewhere. A Board holds an optional overall bar
// (a rollout's tally over the fleet, its phase as the label) and one Item
// per command in flight; a finished item collapses into one result line,
// printed above the bars, as docker compose pull does.
//
// Off a terminal (plain), a Board prints a line for each state change of
// an item, at most one progress line a second per item, and the lines the
// caller prints; never a line per progress report.
package progress

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Options shape a Board.
type Options struct {
	// Out is where the board draws.
	Out io.Writer
	// TTY draws bars (with cursor movements); otherwise plain lines.
	TTY bool
	// Layers draws a bar per image layer under each item pulling (for one
	// command's refresh; a fleet's rollout shows bytes per tenant).
	Layers bool
	// Interval is the least time between two progress lines of an item in
	// plain mode (default 1s).
	Interval time.Duration
	// RefreshRate is how often bars are redrawn (default 150ms).
	RefreshRate time.Duration
}

// Counts is a rollout's tally for the overall bar.
type Counts struct {
	Total, Succeeded, Failed, Skipped int
}

// Waiting is how many tenants are neither done nor skipped.
func (c Counts) Waiting() int { return max(c.Total-c.Succeeded-c.Failed-c.Skipped, 0) }

// Outcome is how an item ended.
type Outcome int

const (
	// OK: the command succeeded.
	OK Outcome = iota
	// Failed: the command failed, rolled back, was partial, expired...
	Failed
	// Neutral: neither (left waiting for its agent, detached).
	Neutral
)

// Step is an item's progress report.
type Step struct {
	// Pull means Current and Total are the bytes of a pull.
	Pull bool
	// Current and Total are bytes of the pull so far and in all, as far as
	// known.
	Current, Total uint64
	// Layers are the pull's layers (drawn with Options.Layers).
	Layers []Layer
	// Text says what the item does: "pulling", "ws-1: waiting for the
	// health gate".
	Text string
}

// Layer is one image layer of a pull.
type Layer struct {
	ID, Status     string
	Current, Total uint64
}

// Board shows the progress of a rollout or of commands. Its methods may
// be called from several goroutines.
type Board interface {
	// Println prints a line above the bars (plain: a line).
	Println(line string)
	// Overall sets the overall bar's label and tally (plain: nothing).
	Overall(label string, c Counts)
	// Item starts showing a command; key identifies it, name is shown.
	Item(key, name string) Item
	// Close removes every bar, prints the final line (if not empty) and
	// returns when the screen is final. Items not done are left with a
	// line saying where they were.
	Close(final string)
}

// Item is one command on a Board.
type Item interface {
	// State reports a state change ("sent", "acked", "running").
	State(text string)
	// Progress reports progress within the state.
	Progress(s Step)
	// Done ends the item with a result line.
	Done(o Outcome, text string)
	// Remove ends the item without a line (a prefetch that succeeded).
	Remove()
}

// New returns a Board drawing to opts.Out.
func New(opts Options) Board {
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.RefreshRate <= 0 {
		opts.RefreshRate = 150 * time.Millisecond
	}
	if opts.TTY {
		return newTTY(opts)
	}
	return newPlain(opts)
}

// StepText is a step in words: the pull's bytes, or the step's text.
func StepText(s Step) string {
	if !s.Pull {
		return s.Text
	}
	text := s.Text
	if text == "" {
		text = "pulling"
	}
	if s.Total == 0 {
		if s.Current == 0 {
			return text
		}
		return fmt.Sprintf("%s %s", text, Bytes(s.Current))
	}
	pct := int(float64(s.Current) * 100 / float64(s.Total))
	line := fmt.Sprintf("%s %s / %s (%d%%)", text, Bytes(s.Current), Bytes(s.Total), min(pct, 100))
	if n := len(s.Layers); n > 0 {
		done := 0
		for _, l := range s.Layers {
			if l.Total > 0 && l.Current >= l.Total || isLayerDone(l.Status) {
				done++
			}
		}
		line += fmt.Sprintf(", %d of %d layers done", done, n)
	}
	return line
}

func isLayerDone(status string) bool {
	s := strings.ToLower(status)
	return strings.Contains(s, "complete") || strings.Contains(s, "already exists")
}

// Bytes is n in binary units: 512 B, 1.0 KiB, 40.0 MiB.
func Bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
