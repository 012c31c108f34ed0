// Package version reports the build version of both binaries.
package version

import (
	"runtime/debug"
	"sync"
)

// Version is set at link time by the Makefile
// (-X github.com/molecule-ai/tenant-agent/pkg/version.Version=...).
// When empty, the module version or VCS revision from the build info is used.
var Version string

// String returns the build version, never empty. It is worked out once:
// the control plane says it in every Welcome, and reading the build info
// parses it anew (6 KB of garbage a call).
func String() string { return once() }

var once = sync.OnceValue(func() string {
	if Version != "" {
		return Version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var revision, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if revision == "" {
		return "devel"
	}
	if len(revision) > 12 {
		revision = revision[:12]
	}
	if modified == "true" {
		revision += "-dirty"
	}
	return "devel-" + revision
})
