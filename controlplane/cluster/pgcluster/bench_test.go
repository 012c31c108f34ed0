package pgcluster

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/molecule-ai/tenant-agent/controlplane/store/postgres"
)

// BenchmarkDoorbell measures a doorbell's latency: from a command
// journaled on replica a to Deliver on replica b, which holds the agent
// (no sweep runs meanwhile). Reports p50 and p99 from the start of
// InsertCommands, and from its return (the commit) alone.
//
//	go test -run '^$' -bench Doorbell -benchtime 500x ./controlplane/cluster/pgcluster
func BenchmarkDoorbell(b *testing.B) {
	dsn := database(b)
	holder := start(b, dsn, "b", noSweep)
	storeA := openStore(b, dsn, postgres.Replica("a"))
	claim(b, holder, agentX)
	lat := make([]time.Duration, 0, b.N)
	after := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		began := time.Now()
		issue(b, storeA, fmt.Sprint("cmd-", i), agentX)
		committed := time.Now()
		select {
		case <-holder.rec.deliveries:
		case <-time.After(5 * time.Second):
			b.Fatal("no delivery")
		}
		lat = append(lat, time.Since(began))
		after = append(after, time.Since(committed))
	}
	b.StopTimer()
	for _, x := range []struct {
		name string
		d    []time.Duration
	}{{"", lat}, {"-after-commit", after}} {
		slices.Sort(x.d)
		b.ReportMetric(float64(x.d[len(x.d)/2].Microseconds()), "p50"+x.name+"-µs")
		b.ReportMetric(float64(x.d[len(x.d)*99/100].Microseconds()), "p99"+x.name+"-µs")
	}
}
