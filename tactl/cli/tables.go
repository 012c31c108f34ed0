package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

// table prints rows under headers, aligned with text/tabwriter.
func table(w io.Writer, headers []string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(headers, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

// printJSON prints a response message as indented protojson.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// jsonLine is one event of a stream as a line of protojson.
func jsonLine(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// age is how long ago t was, kubectl style: 42s, 5m, 3h, 12d.
func age(ts *timestamppb.Timestamp) string {
	if ts == nil || (ts.GetSeconds() == 0 && ts.GetNanos() == 0) {
		return "-"
	}
	d := time.Since(ts.AsTime())
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// stamp is t in RFC 3339, UTC, to the second.
func stamp(ts *timestamppb.Timestamp) string {
	if ts == nil || (ts.GetSeconds() == 0 && ts.GetNanos() == 0) {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shortDigest is "sha256:" and the first 12 hex digits.
func shortDigest(d string) string {
	if strings.HasPrefix(d, "sha256:") && len(d) > 19 {
		return d[:19]
	}
	return dash(d)
}

// shortRef is a repository@digest with the digest shortened.
func shortRef(ref string) string {
	repo, d, ok := strings.Cut(ref, "@")
	if !ok {
		return dash(ref)
	}
	return repo + "@" + shortDigest(d)
}

func (a *app) agentsCommand() *cobra.Command {
	var tenant string
	var connected bool
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "List agents: host, version, connection, Docker, runtimes on their pin",
		Long: `List the agents the control plane knows, connected or not (every page of
ListAgents). RUNTIMES ON PIN counts the agent's runtimes whose containers all
run the runtime's pin, out of the runtimes it reports; -o wide shows each
runtime's containers on pin out of its total.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := a.connect(cmd, "wide", "json")
			if err != nil {
				return err
			}
			defer cancel()
			all := &controlplanev1.ListAgentsResponse{}
			all.Agents, _, err = pages(0, func(token string, _ int) ([]*controlplanev1.Agent, string, error) {
				resp, err := c.ListAgents(ctx, &controlplanev1.ListAgentsRequest{Tenant: tenant, ConnectedOnly: connected, PageSize: 1000, PageToken: token})
				return resp.GetAgents(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return rpcError(err, "ListAgents", a.dialer)
			}
			out := a.io.Stdout
			if a.output.value == "json" {
				return printJSON(out, all)
			}
			wide := a.output.value == "wide"
			headers := []string{"TENANT", "HOST", "VERSION", "CONNECTED", "LAST SEEN", "DOCKER", "RUNTIMES ON PIN"}
			if wide {
				headers = append(headers, "CONTAINERS ON PIN", "HELD", "DENIED", "IDENTITY", "CONNECTED AT")
			}
			var rows [][]string
			for _, ag := range all.GetAgents() {
				onPin, details := 0, []string{}
				for _, r := range ag.GetRuntimes() {
					total := r.GetOnPin() + r.GetOffPin()
					if r.GetPinnedDigest() != "" && r.GetOffPin() == 0 {
						onPin++
					}
					d := fmt.Sprintf("%s %d/%d", r.GetStatus().GetRuntime(), r.GetOnPin(), total)
					if r.GetPinnedDigest() == "" {
						d = r.GetStatus().GetRuntime() + " (no pin)"
					}
					details = append(details, d)
				}
				docker := dash(ag.GetDockerVersion())
				if !ag.GetDockerReachable() {
					docker += " (unreachable)"
				}
				last := age(ag.GetLastSeen())
				if wide {
					last = stamp(ag.GetLastSeen())
				}
				row := []string{ag.GetTenant(), dash(ag.GetHostname()), dash(ag.GetAgentVersion()), yesNo(ag.GetConnected()), last, docker,
					fmt.Sprintf("%d/%d", onPin, len(ag.GetRuntimes()))}
				if wide {
					row = append(row, dash(strings.Join(details, ", ")), yesNo(ag.GetHeld()), yesNo(ag.GetDenied()), ag.GetIdentity(), stamp(ag.GetConnectedAt()))
				}
				rows = append(rows, row)
			}
			table(out, headers, rows)
			return nil
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "only this tenant's agents")
	cmd.Flags().BoolVar(&connected, "connected", false, "only agents with a stream open")
	cmd.RegisterFlagCompletionFunc("tenant", a.completeTenants)
	return cmd
}

func (a *app) pinsCommand() *cobra.Command {
	var history string
	cmd := &cobra.Command{
		Use:   "pins [--history RUNTIME]",
		Short: "List every runtime's pin, or one runtime's pin history",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := a.connect(cmd, "wide", "json")
			if err != nil {
				return err
			}
			defer cancel()
			var pins []*controlplanev1.RuntimePin
			if history != "" {
				resp, err := c.GetRuntimePin(ctx, &controlplanev1.GetRuntimePinRequest{Runtime: history, IncludeHistory: true})
				if err != nil {
					return rpcError(err, "GetRuntimePin", a.dialer)
				}
				if a.output.value == "json" {
					return printJSON(a.io.Stdout, resp)
				}
				pins = append([]*controlplanev1.RuntimePin{resp.GetPin()}, resp.GetHistory()...)
			} else {
				resp, err := c.ListRuntimePins(ctx, &controlplanev1.ListRuntimePinsRequest{})
				if err != nil {
					return rpcError(err, "ListRuntimePins", a.dialer)
				}
				if a.output.value == "json" {
					return printJSON(a.io.Stdout, resp)
				}
				pins = resp.GetPins()
			}
			wide := a.output.value == "wide"
			headers := []string{"RUNTIME", "IMAGE", "GIT SHA", "PROMOTED", "BY"}
			if wide {
				headers = []string{"RUNTIME", "IMAGE", "GIT SHA", "PROMOTED AT", "BY", "TEMPLATE", "NOTES"}
			}
			var rows [][]string
			for _, p := range pins {
				if wide {
					rows = append(rows, []string{p.GetRuntime(), p.GetImageRef(), dash(p.GetGitSha()), stamp(p.GetPromotedAt()), dash(p.GetPromotedBy()),
						dash(p.GetTemplateName()), dash(oneLine(p.GetNotes()))})
					continue
				}
				rows = append(rows, []string{p.GetRuntime(), shortRef(p.GetImageRef()), dash(p.GetGitSha()), age(p.GetPromotedAt()), dash(p.GetPromotedBy())})
			}
			table(a.io.Stdout, headers, rows)
			return nil
		},
	}
	cmd.Flags().StringVar(&history, "history", "", "show this runtime's pin and its earlier pins, newest first")
	cmd.RegisterFlagCompletionFunc("history", a.completeRuntimes)
	return cmd
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}

// commandStates parses --state values: names like failed or rolled-back,
// or the enum's own names.
func commandStates(values []string) ([]controlplanev1.CommandState, error) {
	var out []controlplanev1.CommandState
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			name := "COMMAND_STATE_" + strings.ToUpper(strings.ReplaceAll(strings.TrimPrefix(strings.ToUpper(s), "COMMAND_STATE_"), "-", "_"))
			n, ok := controlplanev1.CommandState_value[name]
			if !ok || n == 0 {
				return nil, usagef("--state %q: want one of %s", s, strings.Join(stateNames(), ", "))
			}
			out = append(out, controlplanev1.CommandState(n))
		}
	}
	return out, nil
}

func stateNames() []string {
	var names []string
	for i := 1; ; i++ {
		n, ok := controlplanev1.CommandState_name[int32(i)]
		if !ok {
			return names
		}
		names = append(names, stateWord(controlplanev1.CommandState(controlplanev1.CommandState_value[n])))
	}
}

// stateWord is a command state in lower case: "rolled-back".
func stateWord(s controlplanev1.CommandState) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.String(), "COMMAND_STATE_")), "_", "-")
}

func kindWord(k controlplanev1.CommandKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "COMMAND_KIND_"))
}

func rolloutStateWord(s controlplanev1.RolloutState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "ROLLOUT_STATE_"))
}

func phaseWord(p controlplanev1.RolloutPhase) string {
	if p == controlplanev1.RolloutPhase_ROLLOUT_PHASE_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(p.String(), "ROLLOUT_PHASE_"))
}

func (a *app) commandsCommand() *cobra.Command {
	var tenant, runtime, rollout string
	var states []string
	var limit int
	cmd := &cobra.Command{
		Use:   "commands",
		Short: "List commands, newest first",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := commandStates(states)
			if err != nil {
				return err
			}
			if limit <= 0 {
				return usagef("--limit %d: want at least 1", limit)
			}
			c, ctx, cancel, err := a.connect(cmd, "wide", "json")
			if err != nil {
				return err
			}
			defer cancel()
			all := &controlplanev1.ListCommandsResponse{}
			all.Commands, all.NextPageToken, err = pages(limit, func(token string, size int) ([]*controlplanev1.Command, string, error) {
				resp, err := c.ListCommands(ctx, &controlplanev1.ListCommandsRequest{Tenant: tenant, Runtime: runtime, RolloutId: rollout, States: st,
					PageSize: uint32(min(size, 500)), PageToken: token})
				return resp.GetCommands(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return rpcError(err, "ListCommands", a.dialer)
			}
			if a.output.value == "json" {
				return printJSON(a.io.Stdout, all)
			}
			wide := a.output.value == "wide"
			headers := []string{"COMMAND", "TENANT", "KIND", "RUNTIME", "DIGEST", "STATE", "AGE", "ROLLOUT"}
			if wide {
				headers = append(headers, "REQUESTED BY", "CREATED AT", "UPDATED AT", "ERROR")
			}
			var rows [][]string
			for _, cm := range all.GetCommands() {
				row := []string{cm.GetCommandId(), cm.GetTenant(), kindWord(cm.GetKind()), cm.GetRuntime(), shortDigest(cm.GetImageDigest()),
					stateWord(cm.GetState()), age(cm.GetCreatedAt()), dash(cm.GetRolloutId())}
				if wide {
					row = append(row, dash(cm.GetRequestedBy()), stamp(cm.GetCreatedAt()), stamp(cm.GetUpdatedAt()), dash(oneLine(commandError(cm))))
				}
				rows = append(rows, row)
			}
			table(a.io.Stdout, headers, rows)
			if all.GetNextPageToken() != "" && a.output.value != "json" {
				fmt.Fprintf(a.io.Stderr, "(the first %d; --limit shows more)\n", len(all.GetCommands()))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&tenant, "tenant", "", "only this tenant's commands")
	f.StringVar(&runtime, "runtime", "", "only this runtime's commands")
	f.StringVar(&rollout, "rollout", "", "only the commands of this rollout (r-...)")
	f.StringSliceVar(&states, "state", nil, "only commands in these states (repeat or separate by commas): "+strings.Join(stateNames(), ", "))
	f.IntVar(&limit, "limit", 50, "show at most this many")
	cmd.RegisterFlagCompletionFunc("tenant", a.completeTenants)
	cmd.RegisterFlagCompletionFunc("runtime", a.completeRuntimes)
	cmd.RegisterFlagCompletionFunc("rollout", a.completeRollouts)
	cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions(stateNames(), cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// commandError is why a command did not succeed: its result's error,
// else the control plane's.
func commandError(c *controlplanev1.Command) string {
	if e := c.GetResult().GetError(); e != "" {
		return e
	}
	return c.GetError()
}

func rolloutStates() []string {
	return []string{"running", "completed", "halted", "aborted"}
}

func (a *app) rolloutsCommand() *cobra.Command {
	var runtime, state string
	var limit int
	cmd := &cobra.Command{
		Use:   "rollouts",
		Short: "List rollouts, newest first",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &controlplanev1.ListRolloutsRequest{Runtime: runtime}
			if state != "" {
				n, ok := controlplanev1.RolloutState_value["ROLLOUT_STATE_"+strings.ToUpper(state)]
				if !ok || n == 0 {
					return usagef("--state %q: want one of %s", state, strings.Join(rolloutStates(), ", "))
				}
				req.State = controlplanev1.RolloutState(n)
			}
			if limit <= 0 {
				return usagef("--limit %d: want at least 1", limit)
			}
			c, ctx, cancel, err := a.connect(cmd, "wide", "json")
			if err != nil {
				return err
			}
			defer cancel()
			all := &controlplanev1.ListRolloutsResponse{}
			all.Rollouts, all.NextPageToken, err = pages(limit, func(token string, size int) ([]*controlplanev1.Rollout, string, error) {
				req.PageSize, req.PageToken = uint32(min(size, 500)), token
				resp, err := c.ListRollouts(ctx, req)
				return resp.GetRollouts(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return rpcError(err, "ListRollouts", a.dialer)
			}
			if a.output.value == "json" {
				return printJSON(a.io.Stdout, all)
			}
			wide := a.output.value == "wide"
			headers := []string{"ROLLOUT", "RUNTIME", "IMAGE", "STATE", "TENANTS", "SUCCEEDED", "FAILED", "SKIPPED", "AGE"}
			if wide {
				headers = append(headers, "OPTIONS", "REQUESTED BY", "CREATED AT", "UPDATED AT", "MESSAGE")
			}
			var rows [][]string
			for _, r := range all.GetRollouts() {
				n := r.GetCounts()
				row := []string{r.GetRolloutId(), r.GetRuntime(), shortRef(r.GetImageRef()), rolloutStateWord(r.GetState()),
					fmt.Sprint(n.GetTenants()), fmt.Sprint(n.GetSucceeded()), fmt.Sprint(n.GetFailed()), fmt.Sprint(n.GetSkipped()), age(r.GetCreatedAt())}
				if wide {
					row = append(row, optionsText(r.GetOptions()), dash(r.GetRequestedBy()), stamp(r.GetCreatedAt()), stamp(r.GetUpdatedAt()), dash(oneLine(r.GetMessage())))
				}
				rows = append(rows, row)
			}
			table(a.io.Stdout, headers, rows)
			if all.GetNextPageToken() != "" {
				fmt.Fprintf(a.io.Stderr, "(the first %d; --limit shows more)\n", len(all.GetRollouts()))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&runtime, "runtime", "", "only this runtime's rollouts")
	f.StringVar(&state, "state", "", "only rollouts in this state: "+strings.Join(rolloutStates(), ", "))
	f.IntVar(&limit, "limit", 50, "show at most this many")
	cmd.RegisterFlagCompletionFunc("runtime", a.completeRuntimes)
	cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions(rolloutStates(), cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// optionsText is a rollout's options in flag form.
func optionsText(o *controlplanev1.RolloutOptions) string {
	var parts []string
	if o.GetPrefetch() {
		parts = append(parts, "--prefetch")
	}
	for _, c := range o.GetCanaryTenants() {
		parts = append(parts, "--canary "+c)
	}
	if n := o.GetMaxParallelTenants(); n > 0 {
		parts = append(parts, fmt.Sprintf("--max-parallel %d", n))
	}
	if n := o.GetHaltAfterFailures(); n > 0 {
		parts = append(parts, fmt.Sprintf("--halt-after %d", n))
	}
	if n := o.GetMaxParallelContainers(); n > 0 {
		parts = append(parts, fmt.Sprintf("--max-parallel-containers %d", n))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// pages reads a list page by page until it ends or, with limit > 0, holds
// limit items; fetch gets the page token and how many items are still
// wanted. It returns the items and the token of the page after them ("" at
// the end).
func pages[T any](limit int, fetch func(token string, want int) ([]T, string, error)) ([]T, string, error) {
	var all []T
	token := ""
	for limit <= 0 || len(all) < limit {
		want := limit - len(all)
		items, next, err := fetch(token, want)
		if err != nil {
			return nil, "", err
		}
		all, token = append(all, items...), next
		if next == "" {
			break
		}
	}
	return all, token, nil
}
