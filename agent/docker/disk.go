package docker

import (
	"context"
	"fmt"
	"syscall"

	"github.com/docker/docker/api/types/registry"
)

// DiskError refuses a pull that would leave Docker's data root with less
// free space than the agent's --min-free-disk.
type DiskError struct {
	Ref, Root            string
	Free, Image, MinFree uint64
}

func (e *DiskError) Error() string {
	return fmt.Sprintf("refused: pulling %s would leave too little disk: Docker's data root %s has %s free, the image is %s (compressed), and --min-free-disk asks for %s to stay free",
		e.Ref, e.Root, HumanBytes(e.Free), HumanBytes(e.Image), HumanBytes(e.MinFree))
}

// CheckDisk refuses, with a *DiskError, to pull ref when the free space of
// Docker's data root less the image's compressed size (read from its
// manifest with auth) would fall below minFree. It touches nothing. It
// passes when the image is present already, and skips the check (one log
// line saying why) when the agent cannot see the data root, as when it
// runs in a container without it mounted. An image whose size the
// registry will not tell counts as size 0: the pull then decides.
func (e *Engine) CheckDisk(ctx context.Context, ref string, auth registry.AuthConfig, minFree uint64) error {
	if _, err := e.verifiedImage(ctx, ref); err == nil {
		return nil
	}
	info, err := e.cli.Info(ctx)
	if err != nil {
		e.logger.Warn("free-disk check skipped: cannot ask the Engine for its data root", "ref", ref, "error", err)
		return nil
	}
	root := info.DockerRootDir
	free, err := freeBytes(root)
	if err != nil {
		e.logger.Warn("free-disk check skipped: the agent cannot see Docker's data root (mount it into the agent to check)", "ref", ref, "path", root, "error", err)
		return nil
	}
	size, err := e.imageSize(ctx, ref, auth)
	if err != nil {
		e.logger.Warn("image size unknown; checking free disk against --min-free-disk alone", "ref", ref, "error", err)
		size = 0
	}
	if free < size || free-size < minFree {
		return &DiskError{Ref: ref, Root: root, Free: free, Image: size, MinFree: minFree}
	}
	e.logger.Info("free-disk check passed", "ref", ref, "path", root, "free", HumanBytes(free), "image", HumanBytes(size), "min_free", HumanBytes(minFree))
	return nil
}

// freeBytes is the space an unprivileged writer may still use at path.
func freeBytes(path string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// HumanBytes writes n in binary units ("3.2 MiB").
func HumanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
