package executor

import (
	"context"
	"fmt"
	"strings"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// cleanUp removes, after a refresh that succeeded, the images of its
// repository that no container uses, keeping KeepImages besides the one
// adopted: the images the containers ran before come first, as they are
// the rollback target. It reports them in the result and as
// COMMAND_PHASE_CLEANING_UP progress; a removal that fails is reported,
// and never fails the command.
func (x *Executor) cleanUp(ctx context.Context, r *tenantagentv1.CommandResult, repo, digest string, moved []docker.Container, hooks Hooks) *tenantagentv1.CommandResult {
	if !x.cfg.CleanupImages || r.GetOutcome() != tenantagentv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		return r
	}
	var previous []string
	for _, c := range moved {
		if d := c.DigestFor(repo); d != "" && d != digest {
			previous = append(previous, d)
		}
	}
	hooks.Progress(&Progress{Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_CLEANING_UP,
		Message: fmt.Sprintf("removing unused images of %s, keeping %d besides %s", repo, x.cfg.KeepImages, digest)})
	res := x.cfg.Engine.CleanupImages(ctx, repo, digest, previous, x.cfg.KeepImages)
	r.ReclaimedBytes = res.ReclaimedBytes
	// removed_images has no bound of its own in pkg/limits; a result's
	// container count is the nearest, and each is an image reference.
	for _, name := range res.Removed[:min(len(res.Removed), limits.Containers)] {
		r.RemovedImages = append(r.RemovedImages, limits.Truncate(name, limits.ImageRef))
	}
	msg := fmt.Sprintf("removed %d unused image(s), reclaimed %s", len(res.Removed), docker.HumanBytes(res.ReclaimedBytes))
	if len(res.Errors) > 0 {
		msg += fmt.Sprintf("; could not remove %d: %s", len(res.Errors), strings.Join(res.Errors, "; "))
	}
	hooks.Progress(&Progress{Phase: tenantagentv1.CommandPhase_COMMAND_PHASE_CLEANING_UP, Message: msg})
	x.cfg.Logger.Info("image cleanup done", "repository", repo, "removed", len(res.Removed), "reclaimed", docker.HumanBytes(res.ReclaimedBytes), "failed", len(res.Errors))
	return r
}
