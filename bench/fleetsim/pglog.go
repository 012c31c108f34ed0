package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
)

// setLogStatements has PostgreSQL log every statement run on the
// database of dsn, for sessions that start after (-pg-statements).
func setLogStatements(dsn string) error {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{conn.Config().Database}.Sanitize()+" SET log_statement = 'all'")
	return err
}

// fileSize is the size of name, 0 if name is "" or unreadable.
func fileSize(name string) int64 {
	if name == "" {
		return 0
	}
	st, err := os.Stat(name)
	if err != nil {
		return 0
	}
	return st.Size()
}

// A logged statement: "LOG:  statement: BEGIN" (simple protocol) or
// "LOG:  execute stmtcache_…: SELECT …" (pgx's prepared statements).
var loggedStatement = regexp.MustCompile(`LOG:  (?:statement|execute [^:]*): (.*)`)

// statementKinds names what a logged statement does, by its opening.
var statementKinds = []struct{ prefix, kind string }{
	{"SELECT seq, id, agent", "read a command"},
	{"UPDATE commands", "update a command"},
	{"INSERT INTO command_events", "insert a command event"},
	{"INSERT INTO commands", "insert a command"},
	{"SELECT pg_notify", "notify"},
	{"begin", "begin"},
	{"commit", "commit"},
}

// countStatements counts the statements logged between offsets from and
// to of the PostgreSQL log, by kind, and in all ("all").
func countStatements(name string, from, to int64) (map[string]int, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil, err
	}
	out := map[string]int{}
	sc := bufio.NewScanner(io.LimitReader(f, to-from))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := loggedStatement.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		out["all"]++
		kind := "other"
		for _, k := range statementKinds {
			if strings.HasPrefix(strings.TrimSpace(m[1]), k.prefix) {
				kind = k.kind
				break
			}
		}
		out[kind]++
	}
	return out, sc.Err()
}
