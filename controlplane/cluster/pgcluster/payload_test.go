package pgcluster

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// What is sent parses back as sent.
func TestPayloadRoundTrip(t *testing.T) {
	m, err := parseBroadcast(sessionPayload(kindClaimed, "r_1", "spiffe://td/tenant/a", 42))
	if err != nil || m.kind != kindClaimed || m.origin != "r_1" || m.identity != "spiffe://td/tenant/a" || m.epoch != 42 {
		t.Fatalf("claim = %+v, %v", m, err)
	}
	p := &tenantagentv1.CommandProgress{CommandId: "cmd-1", Message: "pulling", Container: "ws-1"}
	payload, err := progressPayload("r_1", p)
	if err != nil || payload == "" {
		t.Fatal(payload, err)
	}
	m, err = parseBroadcast(payload)
	if err != nil || !proto.Equal(m.progress, p) {
		t.Fatalf("progress = %+v, %v", m, err)
	}
	m, err = parseDoorbell("k spiffe://td/tenant/a cmd-1")
	if err != nil || m.kind != kindCancel || m.identity != "spiffe://td/tenant/a" || m.id != "cmd-1" {
		t.Fatalf("cancel = %+v, %v", m, err)
	}
}

// splitIDs packs IDs in order into as few payloads as fit, each under
// the limit, and a receiver gets every ID back.
func TestSplitIDs(t *testing.T) {
	var ids []string
	for i := range 3000 {
		ids = append(ids, strings.Repeat("x", i%97+1))
	}
	ids = append(ids, strings.Repeat("y", maxToken))
	var got []string
	payloads := splitIDs(kindCommands, "a", ids)
	total := 0
	for _, p := range payloads {
		if len(p) > maxPayload {
			t.Fatalf("payload of %d bytes", len(p))
		}
		total += len(p)
		m, err := parseBroadcast(p)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m.ids...)
	}
	if strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Fatal("IDs lost or reordered")
	}
	if min := total/maxPayload + 1; len(payloads) > min+1 {
		t.Errorf("%d payloads; %d would do", len(payloads), min)
	}
	if splitIDs(kindCommands, "a", nil) != nil {
		t.Error("payloads for no IDs")
	}
}

func TestProgressTooLarge(t *testing.T) {
	p := &tenantagentv1.CommandProgress{CommandId: "c", Message: strings.Repeat("m", maxPayload)}
	if payload, err := progressPayload("a", p); err != nil || payload != "" {
		t.Fatalf("over-size progress = %d bytes, %v; want dropped", len(payload), err)
	}
}

// No payload makes the parsers panic, and what they accept is bounded.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"s a x 1", "g a x 1", "c a x y", "a a x", "x a", "p a CgFj", "d x", "k x y", "", "s a x 99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if m, err := parseBroadcast(s); err == nil {
			if !validReplica(m.origin) || len(m.ids) > len(s) {
				t.Fatalf("accepted %q as %+v", s, m)
			}
		}
		if m, err := parseDoorbell(s); err == nil && !validToken(m.identity) {
			t.Fatalf("accepted %q as %+v", s, m)
		}
	})
}
