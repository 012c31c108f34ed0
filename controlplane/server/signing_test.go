package server

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/molecule-ai/tenant-agent/controlplane/cptest"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/internal/registrytest"
	"github.com/molecule-ai/tenant-agent/internal/sigtest"
)

// signed is a loopback registry, the key the signature policy trusts, and
// a control plane started with that policy.
type signed struct {
	*harness
	reg    *registrytest.Registry
	signer *sigtest.Signer
	policy string // the policy file
	repo   string // <registry>/molecule-ai/workspace-template-codex
}

// newSigned starts a registry and a control plane whose policy has one
// rule, in mode, for the registry's molecule-ai/* repositories.
func newSigned(t *testing.T, mode string, tenants ...string) *signed {
	s := &signed{reg: registrytest.StartRegistry(t), signer: sigtest.NewSigner(t), policy: filepath.Join(t.TempDir(), "policy.json")}
	s.repo = s.reg.Host + "/molecule-ai/workspace-template-codex"
	if err := os.WriteFile(filepath.Join(filepath.Dir(s.policy), "release.pub"), s.signer.PublicKeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	s.writePolicy(t, mode)
	s.harness = newHarnessWith(t, func(c *Config) { c.SignaturePolicy = s.policy }, tenants...)
	return s
}

func (s *signed) writePolicy(t *testing.T, mode string) {
	t.Helper()
	doc := fmt.Sprintf(`{"rules": [{"repository": %q, "keys": ["release.pub"], "mode": %q}]}`, s.reg.Host+"/molecule-ai/*", mode)
	if err := os.WriteFile(s.policy, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
}

// push pushes a new image to s.repo and returns its pinned reference;
// signer, if not nil, signs it.
func (s *signed) push(t *testing.T, signer *sigtest.Signer) string {
	t.Helper()
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	repository, digest := s.reg.Push(t, "molecule-ai/workspace-template-codex", img)
	ref := repository + "@" + digest
	if signer != nil {
		signer.Sign(t, ref, sigtest.Options{})
	}
	return ref
}

// recorded describes what the store holds of the codex runtime's pins,
// rollouts and commands, to compare before and after a refusal.
func (s *signed) recorded(t *testing.T) string {
	t.Helper()
	admin := s.operator()
	pins := "no pin"
	if resp, err := admin.GetRuntimePin(ctx(t), &controlplanev1.GetRuntimePinRequest{Runtime: "codex", IncludeHistory: true}); err == nil {
		pins = fmt.Sprintf("pin %s, %d in history", resp.GetPin().GetImageDigest(), len(resp.GetHistory()))
	} else if status.Code(err) != codes.NotFound {
		t.Fatal(err)
	}
	rollouts, err := admin.ListRollouts(ctx(t), &controlplanev1.ListRolloutsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := admin.ListCommands(ctx(t), &controlplanev1.ListCommandsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s; %d rollouts; %d commands", pins, len(rollouts.GetRollouts()), len(cmds.GetCommands()))
}

// refused promotes ref, wants code and every one of want in the message,
// and nothing recorded.
func (s *signed) refused(t *testing.T, ref string, code codes.Code, want ...string) {
	t.Helper()
	before := s.recorded(t)
	stream, err := s.operator().PromoteRuntimeImage(ctx(t), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: ref})
	if err == nil {
		var resp *controlplanev1.PromoteRuntimeImageResponse
		resp, err = stream.Recv()
		if err == nil {
			t.Fatalf("promote %s: got event %v, want %v", ref, resp.GetEvent(), code)
		}
	}
	st := status.Convert(err)
	if st.Code() != code {
		t.Fatalf("promote %s: %v, want %v", ref, err, code)
	}
	for _, w := range want {
		if !strings.Contains(st.Message(), w) {
			t.Errorf("promote %s: message %q lacks %q", ref, st.Message(), w)
		}
	}
	if after := s.recorded(t); after != before {
		t.Errorf("a refused promote changed the store: before %q, after %q", before, after)
	}
}

// refresh refreshes tenant's codex to digest and returns the stream's
// events or its error.
func (s *signed) refresh(t *testing.T, tenant, digest string) ([]*controlplanev1.CommandEvent, error) {
	t.Helper()
	stream, err := s.operator().RefreshRuntimeImage(ctx(t), &controlplanev1.RefreshRuntimeImageRequest{Tenant: tenant, Runtime: "codex", ImageDigest: digest})
	if err != nil {
		return nil, err
	}
	var events []*controlplanev1.CommandEvent
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return events, nil
		}
		if err != nil {
			return events, err
		}
		events = append(events, resp.GetEvent())
	}
}

func digestOf(ref string) string { _, d, _ := strings.Cut(ref, "@"); return d }

func TestEnforcedSignaturePolicyGuardsPromoteAndRefresh(t *testing.T) {
	s := newSigned(t, "enforce", "alpha")
	old := s.push(t, s.signer)
	alpha := s.agent("alpha", cptest.Options{Runtimes: []*tenantagentv1.RuntimeStatus{cptest.Runtime("codex", s.repo, digestOf(old), 1)}})
	pattern := s.reg.Host + "/molecule-ai/*"

	unsigned := s.push(t, nil)
	s.refused(t, unsigned, codes.FailedPrecondition, digestOf(unsigned), pattern, "has no valid signature", "no signature")
	otherKey := s.push(t, sigtest.NewSigner(t))
	s.refused(t, otherKey, codes.FailedPrecondition, digestOf(otherKey), pattern, "no signature verifies")
	s.refused(t, "registry.example/other/app@"+digestV2, codes.FailedPrecondition, "no rule of signature policy", s.policy, "registry.example/other/app")

	// A refresh to an explicit digest is checked as a promote is.
	before := s.recorded(t)
	if _, err := s.refresh(t, "alpha", digestOf(unsigned)); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), digestOf(unsigned)) {
		t.Errorf("refresh to an unsigned digest: %v, want FailedPrecondition naming it", err)
	}
	if after := s.recorded(t); after != before {
		t.Errorf("a refused refresh changed the store: before %q, after %q", before, after)
	}

	// Signatures that cannot be read: Unavailable, and nothing recorded.
	good := s.push(t, s.signer)
	s.reg.Stop()
	s.refused(t, good, codes.Unavailable, digestOf(good), "could not be read", "a retry may succeed")
	s.reg.Restart(t)

	events := promote(t, s.operator(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: good})
	recorded := kinds(events, controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_PIN_RECORDED)
	if len(recorded) != 1 || strings.Contains(recorded[0].GetMessage(), "WARNING") {
		t.Errorf("PIN_RECORDED events %v, want one with no warning", recorded)
	}
	if last := events[len(events)-1]; last.GetKind() != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_COMPLETED || last.GetCounts().GetSucceeded() != 1 {
		t.Errorf("last event %v, want COMPLETED with alpha refreshed", last)
	}
	if got := alpha.Refreshes(); len(got) != 1 || got[0].GetImageDigest() != digestOf(good) {
		t.Errorf("alpha received %v, want one refresh to %s", got, digestOf(good))
	}
	if rec := s.recorded(t); rec != "pin "+digestOf(good)+", 0 in history; 1 rollouts; 1 commands" {
		t.Errorf("after the signed promote the store holds %q", rec)
	}

	// A signed explicit digest refreshes.
	events2, err := s.refresh(t, "alpha", digestOf(old))
	if err != nil || len(events2) == 0 || events2[len(events2)-1].GetState() != controlplanev1.CommandState_COMMAND_STATE_SUCCEEDED {
		t.Errorf("refresh to a signed digest: %v, %v", events2, err)
	}
}

func TestWarnSignaturePolicyPromotesAndTells(t *testing.T) {
	s := newSigned(t, "warn", "alpha")
	unsigned := s.push(t, nil)
	s.agent("alpha", cptest.Options{Runtimes: []*tenantagentv1.RuntimeStatus{cptest.Runtime("codex", s.repo, digestV1, 1)}})
	events := promote(t, s.operator(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: unsigned})
	if len(events) == 0 || events[0].GetKind() != controlplanev1.RolloutEventKind_ROLLOUT_EVENT_KIND_PIN_RECORDED {
		t.Fatalf("events %v, want PIN_RECORDED first", events)
	}
	msg := events[0].GetMessage()
	for _, want := range []string{"pin recorded", "WARNING", digestOf(unsigned), "has no valid signature", "warns only"} {
		if !strings.Contains(msg, want) {
			t.Errorf("PIN_RECORDED message %q lacks %q", msg, want)
		}
	}
	if rec := s.recorded(t); !strings.HasPrefix(rec, "pin "+digestOf(unsigned)) {
		t.Errorf("the store holds %q, want the unsigned pin", rec)
	}
	if !strings.Contains(s.logs.String(), "promoting an image whose signature is not verified") {
		t.Errorf("the warning was not logged:\n%s", s.logs.String())
	}

	// A refresh to an unsigned digest tells the warning in its first event.
	refreshed, err := s.refresh(t, "alpha", digestOf(s.push(t, nil)))
	if err != nil || len(refreshed) == 0 || !strings.Contains(refreshed[0].GetMessage(), "WARNING") {
		t.Errorf("refresh in warn mode: %v, %v, want a first event with the warning", refreshed, err)
	}

	// The policy is re-read when it changes: now it enforces.
	s.writePolicy(t, "enforce")
	if changed, err := s.srv.policy.Poll(); !changed || err != nil {
		t.Fatalf("Poll = %v, %v", changed, err)
	}
	s.refused(t, s.push(t, nil), codes.FailedPrecondition, "has no valid signature")
}

func TestNoSignaturePolicyPromotesUnsignedImages(t *testing.T) {
	h := newHarness(t)
	reg := registrytest.StartRegistry(t)
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	repository, digest := reg.Push(t, "molecule-ai/workspace-template-codex", img)
	events := promote(t, h.operator(), &controlplanev1.PromoteRuntimeImageRequest{Runtime: "codex", ImageRef: repository + "@" + digest})
	if len(events) == 0 || events[0].GetMessage() != "pin recorded: codex -> "+repository+"@"+digest {
		t.Errorf("events %v, want PIN_RECORDED with no warning first", events)
	}
	if h.srv.policy != nil {
		t.Error("a policy is loaded without --signature-policy")
	}
}
