package docker

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/molecule-ai/tenant-agent/internal/testlog"
)

// List skips a container removed between the list and its inspect, but
// fails on any other inspect error: a refresh must not report success for
// a container it could not look at.
func TestListSkipsOnlyVanishedContainers(t *testing.T) {
	for _, tc := range []struct {
		name       string
		inspect    int // status of the second container's inspect
		wantErr    bool
		wantListed int
	}{
		{name: "vanished", inspect: http.StatusNotFound, wantListed: 1},
		{name: "daemon error", inspect: http.StatusInternalServerError, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs testlog.Buffer
			e := fakeEngine(t, &logs, func(w http.ResponseWriter, r *http.Request) {
				switch {
				case strings.HasSuffix(r.URL.Path, "/containers/json"):
					w.Write([]byte(`[{"Id": "aaaa"}, {"Id": "bbbb"}]`))
				case strings.HasSuffix(r.URL.Path, "/containers/aaaa/json"):
					w.Write([]byte(`{"Id": "aaaa", "Name": "/ws-a", "Image": "sha256:1111", "Config": {"Image": "r/ws@sha256:1111"}, "State": {"Running": true}}`))
				case strings.HasSuffix(r.URL.Path, "/containers/bbbb/json"):
					w.WriteHeader(tc.inspect)
					w.Write([]byte(`{"message": "inspect failed"}`))
				default: // images: not present
					w.WriteHeader(http.StatusNotFound)
					w.Write([]byte(`{"message": "no such image"}`))
				}
			})
			got, err := e.List(context.Background(), Selector{"managed": "true"})
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "bbbb") {
					t.Fatalf("List = %d containers, %v; want an error naming bbbb", len(got), err)
				}
				return
			}
			if err != nil || len(got) != tc.wantListed || got[0].Name() != "ws-a" {
				t.Fatalf("List = %d containers, %v; want ws-a alone", len(got), err)
			}
		})
	}
}
