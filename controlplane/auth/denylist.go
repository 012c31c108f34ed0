package auth

import (
	"crypto/x509"
	"fmt"
	"sync"

	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

// DenyList holds revoked tenants and certificate serials. The control plane
// consults it at every handshake (see Check) and on every heartbeat, and
// disconnects a denied agent at once.
type DenyList struct {
	mu      sync.RWMutex
	tenants map[string]string // tenant -> reason
	serials map[string]string // SerialHex -> reason
}

// NewDenyList returns an empty deny list.
func NewDenyList() *DenyList {
	return &DenyList{tenants: map[string]string{}, serials: map[string]string{}}
}

// DenyTenant revokes every agent of tenant.
func (d *DenyList) DenyTenant(tenant, reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tenants[tenant] = reason
}

// AllowTenant lifts a tenant's denial.
func (d *DenyList) AllowTenant(tenant string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.tenants, tenant)
}

// DenySerial revokes one certificate; serial is in identity.SerialHex form.
func (d *DenyList) DenySerial(serial, reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.serials[serial] = reason
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
