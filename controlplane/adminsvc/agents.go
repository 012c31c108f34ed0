package adminsvc

import (
	"context"
	"encoding/base64"
	"errors"
	"sort"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

const (
	defaultAgentPageSize = 100
	maxAgentPageSize     = 1000
	// agentPageBytes ends a page early, before its encoded size passes it:
	// well under the 4 MiB every gRPC client accepts by default, so a page
	// always arrives. One agent's record is bounded by pkg/limits (64
	// runtimes, 1000 containers, every field capped) to about 1.5 MiB, so a
	// page always holds at least one.
	agentPageBytes = 2 << 20
)

// ListAgents returns one page of agents in (tenant, identity) order. The
// page token is the last agent's key, so agents that come or go between
// pages neither repeat nor shift the others.
func (s *service) ListAgents(_ context.Context, req *controlplanev1.ListAgentsRequest) (*controlplanev1.ListAgentsResponse, error) {
	size, err := checkPageSize(req.GetPageSize(), defaultAgentPageSize, maxAgentPageSize)
	if err == nil {
		err = checkOptionalName("tenant", req.GetTenant())
	}
	if err != nil {
		return nil, s.status(err)
	}
	agents := s.cfg.Fleet.Agents(req.GetTenant())
	start := 0
	if req.GetPageToken() != "" {
		after, err := decodeAgentToken(req.GetPageToken())
		if err != nil {
			return nil, s.status(errBadPageToken)
		}
		start = sort.Search(len(agents), func(i int) bool { return after.before(keyOf(agents[i])) })
	}
	resp := &controlplanev1.ListAgentsResponse{}
	budget := agentPageBytes
	for _, a := range agents[start:] {
		v := agentProto(s.cfg.Fleet.View(a))
		if req.GetConnectedOnly() && !v.GetConnected() {
			continue
		}
		n := encodedSize(v)
		if len(resp.Agents) == size || (len(resp.Agents) > 0 && n > budget) {
			// There is a next agent: the page ends after the last one sent.
			resp.NextPageToken = encodeAgentToken(lastKey(resp))
			break
		}
		budget -= n
		resp.Agents = append(resp.Agents, v)
	}
	return resp, nil
}

// encodedSize is what v adds to a ListAgentsResponse: the field's tag,
// its length prefix and the message.
func encodedSize(v *controlplanev1.Agent) int {
	n := proto.Size(v)
	return protowire.SizeTag(1) + protowire.SizeBytes(n)
}

func lastKey(resp *controlplanev1.ListAgentsResponse) agentKey {
	v := resp.Agents[len(resp.Agents)-1]
	return agentKey{v.GetTenant(), v.GetIdentity()}
}

// agentKey is the position of an agent in ListAgents' order.
type agentKey struct{ tenant, identity string }

func keyOf(a store.Agent) agentKey { return agentKey{a.Tenant, a.Identity} }

// before reports whether k sorts before o.
func (k agentKey) before(o agentKey) bool {
	if k.tenant != o.tenant {
		return k.tenant < o.tenant
	}
	return k.identity < o.identity
}

const (
	agentTokenPrefix = "agent:"
	// maxPageToken refuses a token before decoding it: ours are a tenant
	// and an identity, far shorter.
	maxPageToken = 1024
)

func encodeAgentToken(k agentKey) string {
	return base64.RawURLEncoding.EncodeToString([]byte(agentTokenPrefix + k.tenant + "\x00" + k.identity))
}

func decodeAgentToken(tok string) (agentKey, error) {
	bad := errors.New("bad page token")
	if len(tok) > maxPageToken {
		return agentKey{}, bad
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return agentKey{}, bad
	}
	rest, ok := strings.CutPrefix(string(b), agentTokenPrefix)
	if !ok {
		return agentKey{}, bad
	}
	tenant, identity, ok := strings.Cut(rest, "\x00")
	if !ok || tenant == "" || identity == "" {
		return agentKey{}, bad
	}
	return agentKey{tenant, identity}, nil
}
