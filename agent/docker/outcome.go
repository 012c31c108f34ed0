package docker

import "time"

// Result is how one container's recreate ended.
type Result int

const (
	// ResultNotAttempted: nothing was changed. With a FailedStep it is the
	// container's own failure (its config, its name); without, it was
	// skipped.
	ResultNotAttempted Result = iota
	// ResultRecreated: the container runs on the target.
	ResultRecreated
	// ResultRolledBack: the old container is back as it was.
	ResultRolledBack
	// ResultFailed: the rollback itself did not complete.
	ResultFailed
)

func (r Result) String() string {
	switch r {
	case ResultRecreated:
		return "recreated"
	case ResultRolledBack:
		return "rolled back"
	case ResultFailed:
		return "failed"
	}
	return "not attempted"
}

// Outcome is what one container's recreate (or its recovery) did.
type Outcome struct {
	Name       string
	OldID      string
	NewID      string
	OldDigest  string
	NewDigest  string
	WasRunning bool
	Result     Result
	// FailedStep is the step that failed, or "".
	FailedStep Step
	// Downtime is from the old container's stop to the new one's start;
	// HealthGate is how long the new one took to prove itself.
	Downtime   time.Duration
	HealthGate time.Duration
	// Err says why the container is not on the target, or nil.
	Err error
}

// ErrorText is Err's message, or "".
func (o Outcome) ErrorText() string {
	if o.Err == nil {
		return ""
	}
	return o.Err.Error()
}

// Report receives a recreate's progress: the step it is at and a line for
// people. StepRollBack and StepDone are reported, never journaled.
type Report func(step Step, message string)
