package agent

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/molecule-ai/tenant-agent/agent/docker"
	"github.com/molecule-ai/tenant-agent/agent/metrics"
	"github.com/molecule-ai/tenant-agent/agent/signature"
	"github.com/molecule-ai/tenant-agent/pkg/sigpolicy"
)

// loadSignaturePolicy loads --signature-policy, if set, so that a bad
// policy fails the start with one line naming the file; nil when off.
func loadSignaturePolicy(path string, logger *slog.Logger) (*sigpolicy.Source, error) {
	if path == "" {
		logger.Info("image signatures are not verified (no --signature-policy)", "component", "signature")
		return nil, nil
	}
	src, err := signature.NewSource(path, logger)
	if err != nil {
		return nil, fmt.Errorf("--signature-policy: %w", err)
	}
	return src, nil
}

// startSignatures returns the verifier the executor asks before every
// pull, nil when verification is off, and keeps the policy current until
// ctx ends. Signatures are read with the pull's own credentials.
func startSignatures(ctx context.Context, cfg Config, policy *sigpolicy.Source, creds docker.CredentialFunc, m *metrics.Metrics) (*signature.Verifier, error) {
	if policy == nil {
		return nil, nil
	}
	cache, err := signature.OpenCache(cfg.StateDir, cfg.Logger)
	if err != nil {
		return nil, err
	}
	go policy.Run(ctx)
	return signature.New(signature.Config{Source: policy, Credentials: creds, Cache: cache, Observe: m.SignatureChecked, Logger: cfg.Logger})
}
