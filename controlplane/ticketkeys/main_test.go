package ticketkeys

import (
	"os"
	"testing"

	"github.com/molecule-ai/tenant-agent/internal/pgtest"
)

// TestMain stops the PostgreSQL server the tests started, if they ran on
// one (TENANT_AGENT_TEST_STORE=postgres).
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
