package cli

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

// Shell completion of tenants, runtimes and rollout IDs asks the control
// plane (with the same flags, variables and config file), for at most two
// seconds; when it cannot, nothing is offered.

func (a *app) completionClient(cmd *cobra.Command) (controlplanev1.AdminServiceClient, context.Context, context.CancelFunc, bool) {
	if a.dialer == nil {
		if err := a.setup(cmd); err != nil {
			return nil, nil, nil, false
		}
	}
	c, err := a.dialer.client()
	if err != nil {
		return nil, nil, nil, false
	}
	ctx, cancel := context.WithTimeout(a.ctx, 2*time.Second)
	return c, ctx, cancel, true
}

func filterPrefix(list []string, prefix string) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range list {
		if strings.HasPrefix(s, prefix) && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

func (a *app) completeTenants(cmd *cobra.Command, argv []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(argv) > 0 && cmd.Name() != "refresh" {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	c, ctx, cancel, ok := a.completionClient(cmd)
	if !ok {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer cancel()
	resp, err := c.ListAgents(ctx, &controlplanev1.ListAgentsRequest{PageSize: 1000})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	for _, ag := range resp.GetAgents() {
		names = append(names, ag.GetTenant())
	}
	return filterPrefix(names, toComplete), cobra.ShellCompDirectiveNoFileComp
}

func (a *app) completeRuntimes(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	c, ctx, cancel, ok := a.completionClient(cmd)
	if !ok {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer cancel()
	resp, err := c.ListRuntimePins(ctx, &controlplanev1.ListRuntimePinsRequest{})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	for _, p := range resp.GetPins() {
		names = append(names, p.GetRuntime())
	}
	return filterPrefix(names, toComplete), cobra.ShellCompDirectiveNoFileComp
}

func (a *app) completeRollouts(cmd *cobra.Command, argv []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(argv) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	c, ctx, cancel, ok := a.completionClient(cmd)
	if !ok {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer cancel()
	resp, err := c.ListRollouts(ctx, &controlplanev1.ListRolloutsRequest{PageSize: 50})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var ids []string
	for _, r := range resp.GetRollouts() {
		ids = append(ids, r.GetRolloutId())
	}
	return filterPrefix(ids, toComplete), cobra.ShellCompDirectiveNoFileComp
}
