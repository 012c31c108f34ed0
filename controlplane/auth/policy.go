// Package auth decides who may call what on the control plane: it reads the
// caller's identity from its verified certificate, enforces a role rule per
// RPC, and holds the deny list consulted at handshake and on heartbeats.
package auth

import (
	"fmt"
	"sort"
	"strings"

	"google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

// Rule says which kinds of identity may call one RPC.
type Rule struct {
	Agent    bool
	Operator bool
	// Service lets service identities call the RPC if their grant covers
	// it (see Grants); Infra lets them call it with no grant.
	Service bool
	Infra   bool
}

func (r Rule) String() string {
	var who []string
	if r.Agent {
		who = append(who, "tenant agents")
	}
	if r.Operator {
		who = append(who, "operators")
	}
	if r.Service || r.Infra {
		who = append(who, "granted services")
	}
	return strings.Join(who, " and ")
}

var (
	agentOnly    = Rule{Agent: true}
	operatorOnly = Rule{Operator: true}
	adminAPI     = Rule{Operator: true, Service: true}
	// Health and reflection reveal no tenant data; any operator or service
	// may use them, agents may not.
	infra = Rule{Operator: true, Infra: true}
)

// Rules is the role rule of every RPC the control plane serves. An RPC
// missing here is refused for everyone (and a test fails).
var Rules = map[string]Rule{
	tenantagentv1.AgentService_Connect_FullMethodName: agentOnly,

	controlplanev1.AdminService_PromoteRuntimeImage_FullMethodName: adminAPI,
	controlplanev1.AdminService_RefreshRuntimeImage_FullMethodName: adminAPI,
	controlplanev1.AdminService_GetRuntimePin_FullMethodName:       adminAPI,
	controlplanev1.AdminService_ListRuntimePins_FullMethodName:     adminAPI,
	controlplanev1.AdminService_ListAgents_FullMethodName:          adminAPI,
	controlplanev1.AdminService_GetCommand_FullMethodName:          adminAPI,
	controlplanev1.AdminService_ListCommands_FullMethodName:        adminAPI,
	controlplanev1.AdminService_WatchCommand_FullMethodName:        adminAPI,
	controlplanev1.AdminService_WatchAgents_FullMethodName:         adminAPI,
	controlplanev1.AdminService_HoldTenant_FullMethodName:          adminAPI,
	controlplanev1.AdminService_ReleaseTenant_FullMethodName:       adminAPI,
	controlplanev1.AdminService_DenyTenant_FullMethodName:          adminAPI,
	controlplanev1.AdminService_AllowTenant_FullMethodName:         adminAPI,
	controlplanev1.AdminService_DenyCertificate_FullMethodName:     adminAPI,
	controlplanev1.AdminService_ListRollouts_FullMethodName:        adminAPI,
	controlplanev1.AdminService_GetRollout_FullMethodName:          adminAPI,
	controlplanev1.AdminService_WatchRollout_FullMethodName:        adminAPI,
	controlplanev1.AdminService_AbortRollout_FullMethodName:        adminAPI,
	controlplanev1.AdminService_ResumeRollout_FullMethodName:       adminAPI,

	grpc_health_v1.Health_Check_FullMethodName:                             infra,
	grpc_health_v1.Health_List_FullMethodName:                              infra,
	grpc_health_v1.Health_Watch_FullMethodName:                             infra,
	reflectionv1.ServerReflection_ServerReflectionInfo_FullMethodName:      infra,
	reflectionv1alpha.ServerReflection_ServerReflectionInfo_FullMethodName: infra,
}

// DefaultServiceGrant is what a service identity may call when Grants names
// no methods for it: rollouts, refreshes and reads; never holds, denials,
// or aborting and resuming rollouts.
var DefaultServiceGrant = []string{
	"PromoteRuntimeImage", "RefreshRuntimeImage",
	"GetRuntimePin", "ListRuntimePins", "ListAgents", "GetCommand", "ListCommands",
	"WatchCommand", "WatchAgents", "ListRollouts", "GetRollout", "WatchRollout",
}

// Grants maps a service name (the <name> of spiffe://td/service/<name>) to
// the AdminService methods it may call, by short name ("HoldTenant").
type Grants map[string][]string

// ParseGrants reads "hook=PromoteRuntimeImage,RefreshRuntimeImage;ci=GetCommand".
// Every method must be an AdminService method.
func ParseGrants(s string) (Grants, error) {
	g := Grants{}
	for _, entry := range strings.Split(s, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, methods, ok := strings.Cut(entry, "=")
		name = strings.TrimSpace(name)
		if !ok || !identity.ValidName(name) {
			return nil, fmt.Errorf("service grant %q: want <service-name>=<Method>[,<Method>...]", entry)
		}
		for _, m := range strings.Split(methods, ",") {
			m = strings.TrimSpace(m)
			if _, ok := Rules["/"+controlplanev1.AdminService_ServiceDesc.ServiceName+"/"+m]; !ok {
				return nil, fmt.Errorf("service grant %q: %q is not an AdminService method (have %s)", entry, m, strings.Join(adminMethods(), ", "))
			}
			g[name] = append(g[name], m)
		}
	}
	return g, nil
}

func adminMethods() []string {
	var out []string
	for _, m := range controlplanev1.AdminService_ServiceDesc.Methods {
		out = append(out, m.MethodName)
	}
	for _, s := range controlplanev1.AdminService_ServiceDesc.Streams {
		out = append(out, s.StreamName)
	}
	sort.Strings(out)
	return out
}

// Policy authorizes calls by identity and method.
type Policy struct {
	rules  map[string]Rule
	grants Grants
}

// NewPolicy returns the policy of Rules with the given service grants.
func NewPolicy(grants Grants) *Policy {
	return &Policy{rules: Rules, grants: grants}
}

// Authorize returns nil if id may call fullMethod ("/pkg.Service/Method"),
// else an error that names the caller's role and the method. It never
// lists a service's grant: which methods a service holds is the control
// plane's configuration, not the caller's business (and it is logged).
func (p *Policy) Authorize(id identity.Identity, fullMethod string) error {
	rule, ok := p.rules[fullMethod]
	if !ok {
		return fmt.Errorf("%s may not call %s: the method has no access rule", role(id), fullMethod)
	}
	switch id.Kind {
	case identity.KindAgent:
		if rule.Agent {
			return nil
		}
	case identity.KindOperator:
		if rule.Operator {
			return nil
		}
	case identity.KindService:
		if rule.Infra || (rule.Service && p.granted(id.Name, fullMethod)) {
			return nil
		}
		if rule.Service {
			return fmt.Errorf("%s may not call %s: not in its grant", role(id), fullMethod)
		}
	}
	return fmt.Errorf("%s may not call %s: only %s may", role(id), fullMethod, rule)
}

// role names a caller by its role and name, e.g. `service "promote-hook"`
// or `agent of tenant "acme"`.
func role(id identity.Identity) string {
	if id.Kind == identity.KindAgent {
		return fmt.Sprintf("agent of tenant %q", id.Tenant)
	}
	return fmt.Sprintf("%s %q", id.Kind, id.Name)
}

func (p *Policy) grantOf(service string) []string {
	if g, ok := p.grants[service]; ok {
		return g
	}
	return DefaultServiceGrant
}

func (p *Policy) granted(service, fullMethod string) bool {
	short := fullMethod[strings.LastIndex(fullMethod, "/")+1:]
	for _, m := range p.grantOf(service) {
		if m == short {
			return true
		}
	}
	return false
}
