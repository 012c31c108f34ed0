// Package cosign tests that pkg/sigverify and real cosign agree, both
// ways, offline against a loopback registry: cosign's signatures verify
// with sigverify, and internal/sigtest's (what the tests of sigverify
// trust) verify with cosign's and sigstore-go's verification.
//
// It is a module of its own so cosign's large dependency graph stays out
// of the product's go.mod; run it with `make interop`.
package cosign
