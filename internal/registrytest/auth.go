package registrytest

import (
	"crypto/subtle"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
)

// basicAuth is what RequireBasicAuth asks of every request.
type basicAuth struct {
	user     string
	password func() string
}

// RequireBasicAuth makes every request, /v2/ included (the Docker daemon
// only sends credentials to a registry whose /v2/ challenged it), need
// user and the password password returns at that moment, so a test can
// rotate it between pulls. Anything else gets 401 with a Basic challenge.
// Push keeps working: it sends the current credentials.
func (r *Registry) RequireBasicAuth(user string, password func() string) {
	r.auth.Store(&basicAuth{user: user, password: password})
}

// authorized answers 401 and returns false when the registry requires
// credentials the request does not carry.
func (r *Registry) authorized(w http.ResponseWriter, req *http.Request) bool {
	a := r.auth.Load()
	if a == nil {
		return true
	}
	user, password, ok := req.BasicAuth()
	if ok && user == a.user && subtle.ConstantTimeCompare([]byte(password), []byte(a.password())) == 1 {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="registrytest"`)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
	return false
}

// pushAuth is the authenticator Push uses: the current credentials, or
// none.
func (r *Registry) pushAuth() authn.Authenticator {
	if a := r.auth.Load(); a != nil {
		return &authn.Basic{Username: a.user, Password: a.password()}
	}
	return authn.Anonymous
}
