package server

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	"github.com/molecule-ai/tenant-agent/pkg/limits"
)

// firstOfStream opens a server stream and returns how its first receive
// ends: a refused request fails there.
func firstOfStream[T any](open func() (interface{ Recv() (T, error) }, error)) error {
	s, err := open()
	if err != nil {
		return err
	}
	_, err = s.Recv()
	return err
}

// TestErrorsQuoteAShortPrefixOfTheInput: a 200 KiB field in any admin
// request is refused with a short InvalidArgument, and neither the answer
// nor any log line repeats more than a short prefix of it.
func TestErrorsQuoteAShortPrefixOfTheInput(t *testing.T) {
	h := newHarness(t, "acme")
	h.agent("acme", codex(digestV1))
	admin := h.operator()
	huge := strings.Repeat("Q", 200<<10)
	c := ctx(t)
	unary := func(_ any, err error) error { return err }
	calls := map[string]error{
		"HoldTenant tenant":    unary(admin.HoldTenant(c, &controlplanev1.HoldTenantRequest{Tenant: huge})),
		"HoldTenant reason":    unary(admin.HoldTenant(c, &controlplanev1.HoldTenantRequest{Tenant: "acme", Reason: huge})),
		"ReleaseTenant":        unary(admin.ReleaseTenant(c, &controlplanev1.ReleaseTenantRequest{Tenant: huge})),
		"DenyTenant":           unary(admin.DenyTenant(c, &controlplanev1.DenyTenantRequest{Tenant: huge})),
		"AllowTenant":          unary(admin.AllowTenant(c, &controlplanev1.AllowTenantRequest{Tenant: huge})),
		"DenyCertificate":      unary(admin.DenyCertificate(c, &controlplanev1.DenyCertificateRequest{Serial: huge})),
		"GetRuntimePin":        unary(admin.GetRuntimePin(c, &controlplanev1.GetRuntimePinRequest{Runtime: huge})),
		"GetCommand":           unary(admin.GetCommand(c, &controlplanev1.GetCommandRequest{CommandId: huge})),
		"ListAgents":           unary(admin.ListAgents(c, &controlplanev1.ListAgentsRequest{Tenant: huge})),
		"ListCommands tenant":  unary(admin.ListCommands(c, &controlplanev1.ListCommandsRequest{Tenant: huge})),
		"ListCommands rt":      unary(admin.ListCommands(c, &controlplanev1.ListCommandsRequest{Runtime: huge})),
		"ListCommands rollout": unary(admin.ListCommands(c, &controlplanev1.ListCommandsRequest{RolloutId: huge})),
		"RefreshRuntimeImage tenant": firstOfStream(func() (interface {
			Recv() (*controlplanev1.RefreshRuntimeImageResponse, error)
		}, error) {
			return admin.RefreshRuntimeImage(c, &controlplanev1.RefreshRuntimeImageRequest{Tenant: huge, Runtime: "codex"})
		}),
		"RefreshRuntimeImage digest": firstOfStream(func() (interface {
			Recv() (*controlplanev1.RefreshRuntimeImageResponse, error)
		}, error) {
			return admin.RefreshRuntimeImage(c, &controlplanev1.RefreshRuntimeImageRequest{Tenant: "acme", Runtime: "codex", ImageDigest: "sha256:" + huge})
		}),
		"WatchCommand": firstOfStream(func() (interface {
			Recv() (*controlplanev1.WatchCommandResponse, error)
		}, error) {
			return admin.WatchCommand(c, &controlplanev1.WatchCommandRequest{CommandId: huge})
		}),
		"WatchAgents": firstOfStream(func() (interface {
			Recv() (*controlplanev1.WatchAgentsResponse, error)
		}, error) {
			return admin.WatchAgents(c, &controlplanev1.WatchAgentsRequest{Tenant: huge})
		}),
		"PromoteRuntimeImage runtime": firstOfStream(func() (interface {
			Recv() (*controlplanev1.PromoteRuntimeImageResponse, error)
		}, error) {
			return admin.PromoteRuntimeImage(c, &controlplanev1.PromoteRuntimeImageRequest{Runtime: huge, ImageRef: repo + "@" + digestV2})
		}),
		"PromoteRuntimeImage image_ref": firstOfStream(func() (interface {
			Recv() (*controlplanev1.PromoteRuntimeImageResponse, error)
		}, error) {
			return admin.PromoteRuntimeImage(c, &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: huge})
		}),
		"PromoteRuntimeImage canary": firstOfStream(func() (interface {
			Recv() (*controlplanev1.PromoteRuntimeImageResponse, error)
		}, error) {
			return admin.PromoteRuntimeImage(c, &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repo + "@" + digestV2,
				Options: &controlplanev1.RolloutOptions{CanaryTenants: []string{huge}}})
		}),
	}
	for name, err := range calls {
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
		if len(st.Message()) > 300 || !strings.Contains(st.Message(), "Q") {
			t.Errorf("%s: message is %d bytes, want a short quote of the input: %.200s", name, len(st.Message()), st.Message())
		}
	}
	longQ := strings.Repeat("Q", limits.Quote+1)
	for _, line := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(line, longQ) || len(line) > 2048 {
			t.Errorf("a log line repeats the input (%d bytes): %.200s", len(line), line)
		}
	}
}
