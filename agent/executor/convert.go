package executor

import (
	"github.com/docker/docker/api/types/container"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/signature"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// This file is the one translation of agent/docker's Go types to the wire.

// containerResult is a container's outcome as a CommandResult carries it.
func containerResult(o docker.Outcome) *tenantagentv1.ContainerResult {
	r := &tenantagentv1.ContainerResult{Name: o.Name, OldContainerId: o.OldID, NewContainerId: o.NewID, OldDigest: o.OldDigest, NewDigest: o.NewDigest,
		WasRunning: o.WasRunning, Outcome: outcomeOf(o.Result), Error: o.ErrorText()}
	if o.FailedStep != "" {
		r.FailedPhase = phaseOf(o.FailedStep)
	}
	if o.Downtime > 0 {
		r.Downtime = durationpb.New(o.Downtime)
	}
	if o.HealthGate > 0 {
		r.HealthGate = durationpb.New(o.HealthGate)
	}
	return r
}

func outcomeOf(r docker.Result) tenantagentv1.ContainerOutcome {
	switch r {
	case docker.ResultRecreated:
		return tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_RECREATED
	case docker.ResultRolledBack:
		return tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_ROLLED_BACK
	case docker.ResultFailed:
		return tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_FAILED
	}
	return tenantagentv1.ContainerOutcome_CONTAINER_OUTCOME_NOT_ATTEMPTED
}

// phaseOf is the command phase a recreate step belongs to.
func phaseOf(s docker.Step) tenantagentv1.CommandPhase {
	switch s {
	case docker.StepCreate, docker.StepConnect:
		return tenantagentv1.CommandPhase_COMMAND_PHASE_CREATING
	case docker.StepDisableRestart, docker.StepStop:
		return tenantagentv1.CommandPhase_COMMAND_PHASE_STOPPING
	case docker.StepRenameOld, docker.StepRenameNew:
		return tenantagentv1.CommandPhase_COMMAND_PHASE_SWAPPING
	case docker.StepStart:
		return tenantagentv1.CommandPhase_COMMAND_PHASE_STARTING
	case docker.StepHealthGate:
		return tenantagentv1.CommandPhase_COMMAND_PHASE_HEALTH_GATE
	case docker.StepRollBack:
		return tenantagentv1.CommandPhase_COMMAND_PHASE_ROLLING_BACK
	case docker.StepDone:
		return tenantagentv1.CommandPhase_COMMAND_PHASE_CONTAINER_DONE
	}
	return tenantagentv1.CommandPhase_COMMAND_PHASE_REMOVING_OLD
}

// containerStatus is a container as Hello and health reports carry it.
func containerStatus(s docker.Status) *tenantagentv1.ContainerStatus {
	st := &tenantagentv1.ContainerStatus{Name: s.Name, Id: s.ID, ImageRef: s.ImageRef, ImageDigest: s.ImageDigest, RestartCount: uint32(s.RestartCount),
		State: stateOf(s.State), Health: healthOf(s.Health)}
	if !s.StartedAt.IsZero() {
		st.StartedAt = timestamppb.New(s.StartedAt)
	}
	return st
}

func stateOf(s container.ContainerState) tenantagentv1.ContainerState {
	switch s {
	case container.StateCreated:
		return tenantagentv1.ContainerState_CONTAINER_STATE_CREATED
	case container.StateRunning:
		return tenantagentv1.ContainerState_CONTAINER_STATE_RUNNING
	case container.StatePaused:
		return tenantagentv1.ContainerState_CONTAINER_STATE_PAUSED
	case container.StateRestarting:
		return tenantagentv1.ContainerState_CONTAINER_STATE_RESTARTING
	case container.StateExited:
		return tenantagentv1.ContainerState_CONTAINER_STATE_EXITED
	case container.StateRemoving:
		return tenantagentv1.ContainerState_CONTAINER_STATE_REMOVING
	case container.StateDead:
		return tenantagentv1.ContainerState_CONTAINER_STATE_DEAD
	}
	return tenantagentv1.ContainerState_CONTAINER_STATE_UNSPECIFIED
}

func healthOf(s container.HealthStatus) tenantagentv1.ContainerHealth {
	switch s {
	case container.Starting:
		return tenantagentv1.ContainerHealth_CONTAINER_HEALTH_STARTING
	case container.Healthy:
		return tenantagentv1.ContainerHealth_CONTAINER_HEALTH_HEALTHY
	case container.Unhealthy:
		return tenantagentv1.ContainerHealth_CONTAINER_HEALTH_UNHEALTHY
	}
	return tenantagentv1.ContainerHealth_CONTAINER_HEALTH_NONE
}

// layers is a pull's per-layer progress on the wire.
func layers(ls []docker.LayerProgress) []*tenantagentv1.LayerProgress {
	out := make([]*tenantagentv1.LayerProgress, len(ls))
	for i, l := range ls {
		out[i] = &tenantagentv1.LayerProgress{Id: l.ID, Status: l.Status, CurrentBytes: l.CurrentBytes, TotalBytes: l.TotalBytes}
	}
	return out
}

// signatureCheck is a signature verification as a CommandResult carries
// it.
func signatureCheck(c signature.Check) *tenantagentv1.SignatureCheck {
	return &tenantagentv1.SignatureCheck{Rule: c.Rule, Mode: c.Mode, Verified: c.Verified, SignedBy: c.SignedBy, Problem: c.Problem, Cached: c.Cached, SignatureRef: c.SignatureRef}
}
