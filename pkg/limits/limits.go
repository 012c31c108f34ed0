// Package limits holds the bounds both sides put on what a peer sends: the
// agent keeps its own messages inside them, and the control plane refuses
// (never stores) anything beyond them. One place, so the two cannot drift.
package limits

import (
	"fmt"
	"strconv"
)

const (
	// Hostname is a DNS name's maximum length.
	Hostname = 253
	// Version bounds an agent's, Docker's or the control plane's version string.
	Version = 128
	// ID bounds command IDs, rollout IDs and container IDs.
	ID = 128
	// Name bounds runtime and container names.
	Name = 255
	// ImageRef bounds an image reference or repository (registry, path,
	// tag and digest together).
	ImageRef = 512
	// Message bounds one free-text message: a progress line, a container's
	// error, a Docker error.
	Message = 1024
	// ResultError bounds a command result's joined error.
	ResultError = 8 << 10
	// Runtimes bounds the runtimes in one report.
	Runtimes = 64
	// Containers bounds the containers in one report or result, over all
	// runtimes.
	Containers = 1000
	// Layers bounds the layers in one progress report.
	Layers = 256
	// InFlight bounds the containers a progress report names as being
	// recreated at once (a command's parallelism is at most 64).
	InFlight = 64
	// HeldCommands bounds the command IDs a Hello or heartbeat may list.
	HeldCommands = 1000
	// Quote is how much of a caller's input an error message repeats.
	Quote = 64
)

// Quoted returns a short quoted prefix of s for an error message or a log
// line: at most Quote bytes of it, with its full length when it was cut, so
// a 200 KiB input never comes back whole.
func Quoted(s string) string {
	if len(s) <= Quote {
		return strconv.Quote(s)
	}
	cut := Quote
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d bytes)", strconv.Quote(s[:cut]), len(s))
}

// Truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }
