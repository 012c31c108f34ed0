package server

import (
	"net"
	"testing"
)

// /metrics names every connected tenant over plain HTTP: unless told
// otherwise, only the host itself may scrape it.
func TestDefaultHTTPAddressIsLoopback(t *testing.T) {
	host, _, err := net.SplitHostPort(Defaults().HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		t.Fatalf("default --http-addr host %q is not a loopback address", host)
	}
}
