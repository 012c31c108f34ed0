// Package pgserver runs a throwaway PostgreSQL server from the machine's
// server binaries, for programs (make demo-ha, bench/fleetsim) and tests
// (internal/pgtest): initdb into a temporary directory, pg_ctl start on a
// free loopback port with trust authentication and no fsync, and Stop
// removes it all. PostgreSQL refuses to run as root, so as root the
// server runs as the postgres user.
package pgserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Server is a running throwaway PostgreSQL cluster.
type Server struct {
	// Bin is the directory holding the binaries it runs from.
	Bin string
	// Dir holds the data, the socket and the log; Stop removes it.
	Dir string
	// Port is its port on 127.0.0.1.
	Port int
	user string // the OS user running it; "" for the current one
}

// FindBin returns the directory of the newest PostgreSQL's server
// binaries: the highest version under /usr/lib/postgresql/*/bin holding
// initdb, else the directory of initdb on PATH.
func FindBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	if d := newest(dirs); d != "" {
		return d, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no PostgreSQL server binaries (initdb) in /usr/lib/postgresql/*/bin or on PATH; install PostgreSQL's server package (Debian: postgresql)")
}

// newest picks, among /usr/lib/postgresql/<version>/bin directories
// holding initdb, the one of the highest version (numerically: 9 < 15).
func newest(dirs []string) string {
	version := func(d string) float64 {
		v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		return v
	}
	var ok []string
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			ok = append(ok, d)
		}
	}
	sort.Slice(ok, func(i, j int) bool { return version(ok[i]) > version(ok[j]) })
	if len(ok) == 0 {
		return ""
	}
	return ok[0]
}

// Start creates a cluster from the binaries in bin and starts it. On
// error nothing is left behind.
func Start(bin string) (*Server, error) {
	dir, err := os.MkdirTemp("", "pgserver-")
	if err != nil {
		return nil, err
	}
	s := &Server{Bin: bin, Dir: dir}
	fail := func(err error) (*Server, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	if os.Geteuid() == 0 {
		if err := s.runAsPostgres(); err != nil {
			return fail(err)
		}
	}
	if s.Port, err = freePort(); err != nil {
		return fail(err)
	}
	data := filepath.Join(dir, "data")
	// Trust on loopback and the private socket only; no fsync: the data
	// dies with the server.
	if err := s.run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return fail(err)
	}
	opts := fmt.Sprintf("-h 127.0.0.1 -p %d -k %s -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200", s.Port, dir)
	if err := s.run("pg_ctl", "-D", data, "-l", s.LogPath(), "-o", opts, "-w", "start"); err != nil {
		log, _ := os.ReadFile(s.LogPath())
		// pg_ctl may have started it after all (a slow start past -w's wait).
		s.run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
		return fail(fmt.Errorf("%w\n%s", err, log))
	}
	return s, nil
}

func (s *Server) runAsPostgres() error {
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running as root needs a postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	s.user = "postgres"
	return os.Chown(s.Dir, uid, gid)
}

// LogPath is the server's log file.
func (s *Server) LogPath() string { return filepath.Join(s.Dir, "log") }

// Version is the version of the binaries, e.g. "15" (from the
// /usr/lib/postgresql/<version>/bin path), or "" if the path does not say.
func (s *Server) Version() string {
	v := filepath.Base(filepath.Dir(s.Bin))
	if _, err := strconv.ParseFloat(v, 64); err != nil {
		return ""
	}
	return v
}

// DSN is the URL of database on the server, as the superuser postgres.
func (s *Server) DSN(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, database)
}

// CreateDatabase creates an empty database and returns its DSN.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	// CREATE DATABASE takes no parameters; quote the name as an identifier.
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", err
	}
	return s.DSN(name), nil
}

// Restart stops the server (fast: every connection is cut, as a failover
// or a restart cuts them) and starts it again on the same port and data;
// pg_ctl restart reuses the options of the last start (postmaster.opts).
func (s *Server) Restart() error {
	err := s.run("pg_ctl", "-D", filepath.Join(s.Dir, "data"), "-l", s.LogPath(), "-m", "fast", "-w", "restart")
	if err != nil {
		log, _ := os.ReadFile(s.LogPath())
		return fmt.Errorf("%w\n%s", err, log)
	}
	return nil
}

// Stop stops the server at once (the data is thrown away) and removes its
// directory.
func (s *Server) Stop() error {
	err := s.run("pg_ctl", "-D", filepath.Join(s.Dir, "data"), "-m", "immediate", "-w", "stop")
	return errors.Join(err, os.RemoveAll(s.Dir))
}

func (s *Server) run(tool string, args ...string) error {
	name := filepath.Join(s.Bin, tool)
	if s.user != "" {
		args = append([]string{"-u", s.user, "--", name}, args...)
		name = "runuser"
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = s.Dir // the postgres user may not be able to enter ours
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", tool, strings.Join(args, " "), err, out)
	}
	return nil
}

// freePort returns a loopback port free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
