package registrytest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registries are the two kinds of registry a test of referrers runs on:
// without the OCI 1.1 referrers API, where clients read and update the
// referrers tag (sha256-<hex>) instead, and with it.
var Registries = []struct {
	Name  string
	Start func(T) *Registry
}{
	{"referrers-tag", StartRegistry},
	{"referrers-api", StartReferrersRegistry},
}

// StartReferrersRegistry serves, until the test ends, a registry with the
// OCI 1.1 referrers API (GET /v2/<name>/referrers/<digest>).
func StartReferrersRegistry(t T) *Registry {
	t.Helper()
	return startRegistry(t, specArtifactTypes(registry.New(registry.Logger(discardLogger()), registry.WithReferrersSupport(true))))
}

// specArtifactTypes corrects go-containerregistry's referrers API, which
// lists every referrer's artifactType as its config's media type: the OCI
// distribution spec says a manifest's own artifactType comes first, and
// real registries (distribution, zot, Harbor, the cloud ones) do that, so
// an artifact with an empty config (cosign's sigstore bundles) is found by
// its artifactType.
func specArtifactTypes(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		repo, _, isReferrers := strings.Cut(strings.TrimPrefix(req.URL.Path, "/v2/"), "/referrers/")
		if req.Method != http.MethodGet || !isReferrers {
			h.ServeHTTP(w, req)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var idx v1.IndexManifest
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &idx) != nil {
			copyResponse(w, rec)
			return
		}
		for i, d := range idx.Manifests {
			m := httptest.NewRecorder()
			h.ServeHTTP(m, httptest.NewRequest(http.MethodGet, "/v2/"+repo+"/manifests/"+d.Digest.String(), nil))
			var manifest struct {
				ArtifactType string `json:"artifactType"`
			}
			if json.Unmarshal(m.Body.Bytes(), &manifest) == nil && manifest.ArtifactType != "" {
				idx.Manifests[i].ArtifactType = manifest.ArtifactType
			}
		}
		body, err := json.Marshal(idx)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", string(types.OCIImageIndex))
		w.Write(body)
	})
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
}
