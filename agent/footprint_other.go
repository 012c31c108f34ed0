//go:build !linux

package agent

import "runtime/debug"

// releaseUntouched hands the heap's free pages back to the system.
func releaseUntouched() { debug.FreeOSMemory() }
