package auth

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"sync"

	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

// DenyList holds revoked tenants and certificate serials. The control plane
// consults it at the start of every call (see Check), refusing with
// PermissionDenied and the reason; the handshake lets denied peers through
// so that they can be told why. A denial also ends, at once, every call
// and connection the denied tenant or certificate has open on either
// listener (see TrackCall and TrackConn).
type DenyList struct {
	mu      sync.RWMutex
	tenants map[string]string // tenant -> reason
	serials map[string]string // SerialHex -> reason
	open    open
}

// NewDenyList returns an empty deny list.
func NewDenyList() *DenyList {
	return &DenyList{tenants: map[string]string{}, serials: map[string]string{},
		open: open{calls: map[*trackedCall]struct{}{}, conns: map[*trackedConn]struct{}{}}}
}

// DenyTenant revokes every agent of tenant, ending what they have open, and
// returns how many calls it ended.
func (d *DenyList) DenyTenant(tenant, reason string) int {
	d.mu.Lock()
	d.tenants[tenant] = reason
	d.mu.Unlock()
	cause := fmt.Errorf("%w: tenant %q is denied: %s", ErrRevoked, tenant, reason)
	return d.open.revoke(func(k peerKey) bool { return k.tenant == tenant }, cause)
}

// AllowTenant lifts a tenant's denial.
func (d *DenyList) AllowTenant(tenant string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.tenants, tenant)
}

// DenySerial revokes one certificate (serial in identity.SerialHex form),
// ending what it has open, and returns how many calls it ended.
func (d *DenyList) DenySerial(serial, reason string) int {
	d.mu.Lock()
	d.serials[serial] = reason
	d.mu.Unlock()
	cause := fmt.Errorf("%w: certificate serial %s is denied: %s", ErrRevoked, serial, reason)
	return d.open.revoke(func(k peerKey) bool { return k.serial == serial }, cause)
}

// Check returns an error if the identity's tenant or the certificate's
// serial is denied. It has the shape of mtls.PeerCheck.
func (d *DenyList) Check(id identity.Identity, cert *x509.Certificate) error {
	return d.Denied(id.Tenant, identity.SerialHex(cert))
}

// Denied returns an error if the tenant (may be empty) or the serial is
// denied.
func (d *DenyList) Denied(tenant, serial string) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if reason, ok := d.serials[serial]; ok {
		return fmt.Errorf("certificate serial %s is denied: %s", serial, reason)
	}
	if reason, ok := d.tenants[tenant]; ok && tenant != "" {
		return fmt.Errorf("tenant %q is denied: %s", tenant, reason)
	}
	return nil
}

// TrackCall returns ctx for a call of id's certificate, canceled with an
// ErrRevoked cause if the tenant or certificate is denied while the call
// runs; done must be called when the call ends.
func (d *DenyList) TrackCall(ctx context.Context, id identity.Identity, cert *x509.Certificate) (_ context.Context, done func()) {
	return d.open.trackCall(ctx, id.Tenant, identity.SerialHex(cert))
}

// TrackConn returns conn, closed if its peer's tenant or certificate is
// denied. It has the shape of mtls.ConnTracker.
func (d *DenyList) TrackConn(conn net.Conn, id identity.Identity, cert *x509.Certificate) net.Conn {
	return d.open.trackConn(conn, id.Tenant, identity.SerialHex(cert))
}

// Open reports how many calls and connections are tracked (for tests and
// metrics).
func (d *DenyList) Open() (calls, conns int) { return d.open.counts() }
