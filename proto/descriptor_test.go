// Package proto_test checks the generated descriptors against the protocol
// docs/design.md promises, so a missing or renamed RPC or message fails the build.
package proto_test

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

type shape struct{ clientStreams, serverStreams bool }

var (
	unary        = shape{}
	serverStream = shape{serverStreams: true}
	bidi         = shape{clientStreams: true, serverStreams: true}
)

func checkService(t *testing.T, sd protoreflect.ServiceDescriptor, want map[string]shape) {
	t.Helper()
	methods := sd.Methods()
	for name, s := range want {
		m := methods.ByName(protoreflect.Name(name))
		if m == nil {
			t.Errorf("%s: RPC %s is missing", sd.FullName(), name)
			continue
		}
		got := shape{m.IsStreamingClient(), m.IsStreamingServer()}
		if got != s {
			t.Errorf("%s.%s: streaming (client, server) = %v, want %v", sd.FullName(), name, got, s)
		}
	}
	for i := range methods.Len() {
		if _, ok := want[string(methods.Get(i).Name())]; !ok {
			t.Errorf("%s.%s is not in this test: add it with its shape", sd.FullName(), methods.Get(i).Name())
		}
	}
}

func TestAgentServiceShape(t *testing.T) {
	fd := tenantagentv1.File_tenantagent_v1_agent_service_proto
	sd := fd.Services().ByName("AgentService")
	if sd == nil {
		t.Fatal("tenantagent.v1.AgentService is missing")
	}
	checkService(t, sd, map[string]shape{"Connect": bidi})

	connect := sd.Methods().ByName("Connect")
	if got := connect.Input().FullName(); got != "tenantagent.v1.AgentMessage" {
		t.Errorf("Connect input = %s, want tenantagent.v1.AgentMessage", got)
	}
	if got := connect.Output().FullName(); got != "tenantagent.v1.ControlMessage" {
		t.Errorf("Connect output = %s, want tenantagent.v1.ControlMessage", got)
	}

	// Every message of docs/design.md §5 travels in the envelopes' oneof.
	envelopes := map[protoreflect.MessageDescriptor][]protoreflect.FullName{
		connect.Input(): {
			"tenantagent.v1.Hello", "tenantagent.v1.HealthReport", "tenantagent.v1.CommandAck",
			"tenantagent.v1.CommandProgress", "tenantagent.v1.CommandResult",
		},
		connect.Output(): {
			"tenantagent.v1.Welcome", "tenantagent.v1.RefreshRuntimeImage", "tenantagent.v1.PrefetchRuntimeImage",
			"tenantagent.v1.CancelCommand", "tenantagent.v1.ResultReceived", "tenantagent.v1.Reconnect",
		},
	}
	for envelope, wantBodies := range envelopes {
		body := envelope.Oneofs().ByName("body")
		if body == nil {
			t.Errorf("%s has no oneof body", envelope.FullName())
			continue
		}
		have := map[protoreflect.FullName]bool{}
		for i := range body.Fields().Len() {
			have[body.Fields().Get(i).Message().FullName()] = true
		}
		for _, w := range wantBodies {
			if !have[w] {
				t.Errorf("%s.body does not carry %s", envelope.FullName(), w)
			}
		}
	}
}

func TestAdminServiceShape(t *testing.T) {
	sd := controlplanev1.File_controlplane_v1_admin_service_proto.Services().ByName("AdminService")
	if sd == nil {
		t.Fatal("controlplane.v1.AdminService is missing")
	}
	checkService(t, sd, map[string]shape{
		"PromoteRuntimeImage": serverStream,
		"RefreshRuntimeImage": serverStream,
		"GetRuntimePin":       unary,
		"ListRuntimePins":     unary,
		"ListAgents":          unary,
		"GetCommand":          unary,
		"ListCommands":        unary,
		"WatchCommand":        serverStream,
		"WatchAgents":         serverStream,
		"HoldTenant":          unary,
		"ReleaseTenant":       unary,
		"DenyTenant":          unary,
		"AllowTenant":         unary,
		"DenyCertificate":     unary,
		"ListRollouts":        unary,
		"GetRollout":          unary,
		"WatchRollout":        serverStream,
		"AbortRollout":        unary,
		"ResumeRollout":       unary,
	})
}

// Every enum starts with an _UNSPECIFIED zero value, so an unset field is
// never mistaken for a real state.
func TestEnumsHaveUnspecifiedZero(t *testing.T) {
	for _, fd := range []protoreflect.FileDescriptor{
		tenantagentv1.File_tenantagent_v1_agent_service_proto,
		controlplanev1.File_controlplane_v1_admin_service_proto,
	} {
		enums := fd.Enums()
		for i := range enums.Len() {
			e := enums.Get(i)
			zero := e.Values().ByNumber(0)
			if zero == nil || !strings.HasSuffix(string(zero.Name()), "_UNSPECIFIED") {
				t.Errorf("enum %s: zero value is not *_UNSPECIFIED", e.FullName())
			}
		}
	}
}
