package adminsvc

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestAgentPageTokens(t *testing.T) {
	k := agentKey{"acme", "spiffe://molecule.local/tenant/acme/agent/host-2"}
	got, err := decodeAgentToken(encodeAgentToken(k))
	if err != nil || got != k {
		t.Fatalf("round trip = %v, %v; want %v", got, err, k)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	for name, tok := range map[string]string{
		"not base64":         "!!!",
		"ListCommands token": b64([]byte("seq:42")),
		"no identity":        b64([]byte("agent:acme")),
		"empty tenant":       b64([]byte("agent:\x00id")),
		"too long":           strings.Repeat("A", maxPageToken+1),
	} {
		if _, err := decodeAgentToken(tok); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if !(agentKey{"a", "z"}).before(agentKey{"b", "a"}) || !(agentKey{"a", "a"}).before(agentKey{"a", "b"}) || (agentKey{"a", "b"}).before(agentKey{"a", "b"}) {
		t.Error("before does not order by tenant, then identity")
	}
}
