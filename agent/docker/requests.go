package docker

import (
	"maps"
	"net/http"
	"strings"
	"sync"
)

// RequestCounter counts the Engine API requests an Engine sends, by kind
// ("GET /containers/{id}/json"), so tests and benchmarks can show what
// the agent asks of the Engine (an idle agent should ask next to nothing).
type RequestCounter struct {
	mu sync.Mutex
	n  map[string]int
}

// Counts returns a copy of the counts by kind.
func (c *RequestCounter) Counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.n)
}

// Total is the number of requests counted.
func (c *RequestCounter) Total() int {
	n := 0
	for _, v := range c.Counts() {
		n += v
	}
	return n
}

// Reset forgets what was counted.
func (c *RequestCounter) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n = nil
}

func (c *RequestCounter) add(kind string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[kind]++
}

// countingTransport counts each request, then sends it.
type countingTransport struct {
	c    *RequestCounter
	next http.RoundTripper
}

func (t countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.c.add(RequestKind(req.Method, req.URL.Path))
	return t.next.RoundTrip(req)
}

// RequestKind names a request without its API version and object IDs:
// "GET /v1.51/containers/3f2a/json" is "GET /containers/{id}/json".
func RequestKind(method, path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) > 0 && strings.HasPrefix(parts[0], "v1.") {
		parts = parts[1:]
	}
	// /containers/<id>/<verb>, /images/<name...>/json: everything between
	// the collection and the verb is the object.
	if len(parts) >= 3 {
		parts = []string{parts[0], "{id}", parts[len(parts)-1]}
	}
	return method + " /" + strings.Join(parts, "/")
}
