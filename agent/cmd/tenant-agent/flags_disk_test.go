package main

import (
	"io"
	"testing"
)

func TestMinFreeDiskAndKeepImagesFlags(t *testing.T) {
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil || cfg.MinFreeDisk != 5<<30 || cfg.KeepImages != 1 {
		t.Fatalf("defaults: min free %d, keep %d, %v; want 5 GiB and 1", cfg.MinFreeDisk, cfg.KeepImages, err)
	}
	t.Setenv("TENANT_AGENT_MIN_FREE_DISK", "500MiB")
	t.Setenv("TENANT_AGENT_KEEP_IMAGES", "3")
	cfg, err = parseFlags(nil, io.Discard)
	if err != nil || cfg.MinFreeDisk != 500<<20 || cfg.KeepImages != 3 {
		t.Fatalf("from the environment: %d, %d, %v", cfg.MinFreeDisk, cfg.KeepImages, err)
	}
	cfg, err = parseFlags([]string{"--min-free-disk", "2GB", "--keep-images", "-1"}, io.Discard)
	if err != nil || cfg.MinFreeDisk != 2e9 || cfg.KeepImages != -1 {
		t.Fatalf("the flags win: %d, %d, %v", cfg.MinFreeDisk, cfg.KeepImages, err)
	}
	for _, bad := range []string{"lots", "5XB", "-1GiB", ""} {
		if _, err := parseFlags([]string{"--min-free-disk", bad}, io.Discard); err == nil {
			t.Errorf("--min-free-disk %q accepted", bad)
		}
	}
	for in, want := range map[string]uint64{"0": 0, "1.5GiB": 3 << 29, "10 k": 10 << 10, "7": 7} {
		var n uint64
		if err := (byteSize{&n}).Set(in); err != nil || n != want {
			t.Errorf("%q = %d, %v; want %d", in, n, err, want)
		}
	}
}
