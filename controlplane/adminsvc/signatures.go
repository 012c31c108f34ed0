package adminsvc

import (
	"context"
	"strings"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	"github.com/molecule-ai/tenant-agent/pkg/imageref"
)

// checkSignatures checks a refresh's explicit image_digest as a promote
// checks its image, once per repository the planned commands name (the
// pin's, or the one each agent runs when there is no pin). A refresh to
// the pin (no image_digest) is not checked again: the pin was checked when
// it was promoted. It returns the warnings to tell, joined.
func (s *service) checkSignatures(ctx context.Context, digest string, cmds []*store.Command) (string, error) {
	if s.cfg.Signatures == nil || digest == "" {
		return "", nil
	}
	var warnings []string
	checked := map[string]bool{}
	for _, c := range cmds {
		if checked[c.Repository] {
			continue
		}
		checked[c.Repository] = true
		w, err := s.cfg.Signatures.Check(ctx, imageref.Ref{Repository: c.Repository, Digest: digest})
		if err != nil {
			return "", err
		}
		if w != "" {
			warnings = append(warnings, w)
		}
	}
	return strings.Join(warnings, "; "), nil
}
