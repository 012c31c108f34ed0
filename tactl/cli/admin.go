package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

// unary runs one call and prints its response as a line of text, or as
// JSON with -o json.
func (a *app) unary(cmd *cobra.Command, what string, call func(c controlplanev1.AdminServiceClient) (proto.Message, string, error)) error {
	if err := a.wantOutput(cmd, "json"); err != nil {
		return err
	}
	c, err := a.dialer.client()
	if err != nil {
		return err
	}
	resp, line, err := call(c)
	if err != nil {
		return rpcError(err, what, a.dialer)
	}
	if a.output.value == "json" {
		return printJSON(a.io.Stdout, resp)
	}
	fmt.Fprintln(a.io.Stdout, line)
	return nil
}

func (a *app) adminCommands() []*cobra.Command {
	var holdReason string
	hold := &cobra.Command{
		Use:               "hold TENANT [--reason TEXT]",
		Short:             "Hold a tenant: no automatic refreshes or rollouts until released",
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeTenants,
		RunE: func(cmd *cobra.Command, argv []string) error {
			return a.unary(cmd, "HoldTenant", func(c controlplanev1.AdminServiceClient) (proto.Message, string, error) {
				ctx, cancel := a.context()
				defer cancel()
				resp, err := c.HoldTenant(ctx, &controlplanev1.HoldTenantRequest{Tenant: argv[0], Reason: holdReason})
				return resp, fmt.Sprintf("tenant %s held since %s", argv[0], stamp(resp.GetHeldAt())), err
			})
		},
	}
	hold.Flags().StringVar(&holdReason, "reason", "", "why, recorded with the hold")

	release := &cobra.Command{
		Use:               "release TENANT",
		Short:             "Release a held tenant: it is reconciled to the pins again",
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeTenants,
		RunE: func(cmd *cobra.Command, argv []string) error {
			return a.unary(cmd, "ReleaseTenant", func(c controlplanev1.AdminServiceClient) (proto.Message, string, error) {
				ctx, cancel := a.context()
				defer cancel()
				resp, err := c.ReleaseTenant(ctx, &controlplanev1.ReleaseTenantRequest{Tenant: argv[0]})
				line := fmt.Sprintf("tenant %s released", argv[0])
				if !resp.GetReleased() {
					line = fmt.Sprintf("tenant %s was not held", argv[0])
				}
				return resp, line, err
			})
		},
	}

	deny := &cobra.Command{
		Use:   "deny tenant TENANT --reason TEXT | deny cert SERIAL --reason TEXT",
		Short: "Revoke a tenant or one certificate: disconnected at once, refused on reconnect",
	}
	var denyTenantReason, denyCertReason string
	denyTenant := &cobra.Command{
		Use:               "tenant TENANT --reason TEXT",
		Short:             "Deny a tenant: its agents are disconnected and refused until tactl allow",
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeTenants,
		RunE: func(cmd *cobra.Command, argv []string) error {
			if strings.TrimSpace(denyTenantReason) == "" {
				return usagef("deny tenant: --reason is required")
			}
			return a.unary(cmd, "DenyTenant", func(c controlplanev1.AdminServiceClient) (proto.Message, string, error) {
				ctx, cancel := a.context()
				defer cancel()
				resp, err := c.DenyTenant(ctx, &controlplanev1.DenyTenantRequest{Tenant: argv[0], Reason: denyTenantReason})
				return resp, fmt.Sprintf("tenant %s denied; %d streams closed", argv[0], resp.GetDisconnected()), err
			})
		},
	}
	denyTenant.Flags().StringVar(&denyTenantReason, "reason", "", "why, recorded with the denial (required)")
	denyCert := &cobra.Command{
		Use:   "cert SERIAL --reason TEXT",
		Short: "Deny one certificate by serial number (hex, colons optional)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			if strings.TrimSpace(denyCertReason) == "" {
				return usagef("deny cert: --reason is required")
			}
			return a.unary(cmd, "DenyCertificate", func(c controlplanev1.AdminServiceClient) (proto.Message, string, error) {
				ctx, cancel := a.context()
				defer cancel()
				resp, err := c.DenyCertificate(ctx, &controlplanev1.DenyCertificateRequest{Serial: argv[0], Reason: denyCertReason})
				return resp, fmt.Sprintf("certificate %s denied; %d streams closed", argv[0], resp.GetDisconnected()), err
			})
		},
	}
	denyCert.Flags().StringVar(&denyCertReason, "reason", "", "why, recorded with the denial (required)")
	deny.AddCommand(denyTenant, denyCert)
	deny.Args = args(func(cmd *cobra.Command, argv []string) error {
		if len(argv) == 0 {
			return fmt.Errorf("say what to deny: tenant or cert")
		}
		return fmt.Errorf("unknown kind %q: want tenant or cert", argv[0])
	})
	deny.RunE = func(cmd *cobra.Command, argv []string) error { return nil }

	allow := &cobra.Command{
		Use:               "allow TENANT",
		Short:             "Lift a tenant's denial",
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeTenants,
		RunE: func(cmd *cobra.Command, argv []string) error {
			return a.unary(cmd, "AllowTenant", func(c controlplanev1.AdminServiceClient) (proto.Message, string, error) {
				ctx, cancel := a.context()
				defer cancel()
				resp, err := c.AllowTenant(ctx, &controlplanev1.AllowTenantRequest{Tenant: argv[0]})
				return resp, fmt.Sprintf("tenant %s allowed", argv[0]), err
			})
		},
	}
	return []*cobra.Command{hold, release, deny, allow}
}

func (a *app) rolloutCommand() *cobra.Command {
	ro := &cobra.Command{
		Use:   "rollout get|abort|resume ID",
		Short: "Show, abort or resume one rollout",
	}
	ro.Args = args(func(cmd *cobra.Command, argv []string) error {
		if len(argv) == 0 {
			return fmt.Errorf("say get, abort or resume")
		}
		return fmt.Errorf("unknown subcommand %q: want get, abort or resume", argv[0])
	})
	ro.RunE = func(cmd *cobra.Command, argv []string) error { return nil }

	get := &cobra.Command{
		Use:               "get ROLLOUT_ID",
		Short:             "Show a rollout and its tally of tenants",
		Args:              args(rolloutIDArg),
		ValidArgsFunction: a.completeRollouts,
		RunE: func(cmd *cobra.Command, argv []string) error {
			c, ctx, cancel, err := a.connect(cmd, "json")
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.GetRollout(ctx, &controlplanev1.GetRolloutRequest{RolloutId: argv[0]})
			if err != nil {
				return rpcError(err, "GetRollout", a.dialer)
			}
			if a.output.value == "json" {
				return printJSON(a.io.Stdout, resp)
			}
			printRollout(a, resp.GetRollout())
			return nil
		},
	}
	var reason string
	abort := &cobra.Command{
		Use:               "abort ROLLOUT_ID [--reason TEXT]",
		Short:             "Stop a running or halted rollout: unsent commands are canceled, reconcile takes the runtime back",
		Args:              args(rolloutIDArg),
		ValidArgsFunction: a.completeRollouts,
		RunE: func(cmd *cobra.Command, argv []string) error {
			return a.unary(cmd, "AbortRollout", func(c controlplanev1.AdminServiceClient) (proto.Message, string, error) {
				ctx, cancel := a.context()
				defer cancel()
				resp, err := c.AbortRollout(ctx, &controlplanev1.AbortRolloutRequest{RolloutId: argv[0], Reason: reason})
				return resp, fmt.Sprintf("rollout %s %s; %d unsent commands canceled", argv[0], rolloutStateWord(resp.GetRollout().GetState()), resp.GetCanceled()), err
			})
		},
	}
	abort.Flags().StringVar(&reason, "reason", "", "why, recorded in the rollout's message")
	resume := &cobra.Command{
		Use:               "resume ROLLOUT_ID",
		Short:             "Go on with a halted rollout (follow it with tactl watch ROLLOUT_ID)",
		Args:              args(rolloutIDArg),
		ValidArgsFunction: a.completeRollouts,
		RunE: func(cmd *cobra.Command, argv []string) error {
			return a.unary(cmd, "ResumeRollout", func(c controlplanev1.AdminServiceClient) (proto.Message, string, error) {
				ctx, cancel := a.context()
				defer cancel()
				resp, err := c.ResumeRollout(ctx, &controlplanev1.ResumeRolloutRequest{RolloutId: argv[0]})
				return resp, fmt.Sprintf("rollout %s %s; follow it with: tactl watch %s", argv[0], rolloutStateWord(resp.GetRollout().GetState()), argv[0]), err
			})
		},
	}
	ro.AddCommand(get, abort, resume)
	return ro
}

func rolloutIDArg(cmd *cobra.Command, argv []string) error {
	if err := cobra.ExactArgs(1)(cmd, argv); err != nil {
		return err
	}
	if !strings.HasPrefix(argv[0], "r-") {
		return fmt.Errorf("%q is not a rollout ID (they start with r-)", argv[0])
	}
	return nil
}

func printRollout(a *app, r *controlplanev1.Rollout) {
	n := r.GetCounts()
	waiting := int64(n.GetTenants()) - int64(n.GetSucceeded()) - int64(n.GetFailed()) - int64(n.GetSkipped())
	rows := [][]string{
		{"rollout:", r.GetRolloutId()},
		{"runtime:", r.GetRuntime()},
		{"image:", r.GetImageRef()},
		{"state:", rolloutStateWord(r.GetState())},
		{"tenants:", fmt.Sprintf("%d: %d succeeded, %d failed, %d skipped, %d not done", n.GetTenants(), n.GetSucceeded(), n.GetFailed(), n.GetSkipped(), max(waiting, 0))},
		{"options:", optionsText(r.GetOptions())},
		{"requested by:", dash(r.GetRequestedBy())},
		{"created:", stamp(r.GetCreatedAt())},
		{"updated:", stamp(r.GetUpdatedAt())},
		{"message:", dash(r.GetMessage())},
	}
	w := a.io.Stdout
	for _, row := range rows {
		fmt.Fprintf(w, "%-14s %s\n", row[0], row[1])
	}
}
