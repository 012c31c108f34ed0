package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"
)

// LayerProgress is one layer of a pull.
type LayerProgress struct {
	ID           string
	Status       string
	CurrentBytes uint64
	TotalBytes   uint64
}

// PullProgress is the state of a pull, summed over its layers.
type PullProgress struct {
	Layers       []LayerProgress
	CurrentBytes uint64
	TotalBytes   uint64
	Message      string
}

// PullResult is what a finished pull reports.
type PullResult struct {
	// ImageID is the pulled image's local ID (its config digest).
	ImageID string
	// Duration is zero when the image was already present.
	Duration time.Duration
	Bytes    uint64
}

// PullOptions tune Pull.
type PullOptions struct {
	// Auth is the registry credentials for this pull (resolved by the
	// caller just before it), or empty for anonymous.
	Auth registry.AuthConfig
	// Attempts is how often a transient failure is retried (default 5).
	Attempts int
	// Backoff is the first wait between attempts; it doubles (default 2s).
	Backoff time.Duration
	// Every bounds how often progress is reported (default 250ms).
	Every time.Duration
}

// Pull pulls ref ("repo@sha256:...") unless it is present, reading the
// pull stream to its end and reporting per-layer byte progress at most once
// per opts.Every. A transient failure (network, registry trouble) is
// retried with backoff; a permanent one (no such manifest, refused
// credentials) fails at once. Either way the error is a *PullError. It
// then verifies the image's RepoDigests hold ref, so nothing later runs on
// an image that is not the pin.
func (e *Engine) Pull(ctx context.Context, ref string, opts PullOptions, progress func(PullProgress)) (PullResult, error) {
	if opts.Attempts <= 0 {
		opts.Attempts = 5
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 2 * time.Second
	}
	if opts.Every <= 0 {
		opts.Every = 250 * time.Millisecond
	}
	if id, err := e.verifiedImage(ctx, ref); err == nil {
		return PullResult{ImageID: id}, nil
	}
	header, err := encodeAuth(opts.Auth)
	if err != nil {
		return PullResult{}, err
	}
	start := time.Now()
	var bytes uint64
	for attempt := 1; ; attempt++ {
		bytes, err = e.pullOnce(ctx, ref, header, opts.Every, progress)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return PullResult{}, fmt.Errorf("pull %s: %w", ref, ctx.Err())
		}
		transient, reason := e.decide(ctx, ref, opts.Auth, err)
		if !transient || attempt == opts.Attempts {
			return PullResult{}, &PullError{Ref: ref, Err: err, Transient: transient, Reason: reason, Attempts: attempt}
		}
		wait := opts.Backoff << (attempt - 1)
		wait = wait/2 + rand.N(wait/2+1)
		e.logger.Warn("pull failed; retrying", "ref", ref, "attempt", attempt, "in", wait, "error", err, "reason", reason)
		select {
		case <-ctx.Done():
			return PullResult{}, fmt.Errorf("pull %s: %w", ref, ctx.Err())
		case <-time.After(wait):
		}
	}
	id, err := e.verifiedImage(ctx, ref)
	if err != nil {
		return PullResult{}, err
	}
	return PullResult{ImageID: id, Duration: time.Since(start), Bytes: bytes}, nil
}

// verifiedImage returns the local image ID of ref if the image is present
// and its RepoDigests hold ref.
func (e *Engine) verifiedImage(ctx context.Context, ref string) (string, error) {
	img, err := e.cli.ImageInspect(ctx, ref)
	if err != nil {
		return "", err
	}
	if !slices.Contains(img.RepoDigests, ref) {
		return "", fmt.Errorf("image %s is present but its repository digests %v do not include %s", img.ID, img.RepoDigests, ref)
	}
	return img.ID, nil
}

// pullMessage is one line of the Engine's pull stream (the fields of
// jsonmessage.JSONMessage the agent reads, without its terminal code).
type pullMessage struct {
	Status   string `json:"status"`
	ID       string `json:"id"`
	Progress *struct {
		Current int64 `json:"current"`
		Total   int64 `json:"total"`
	} `json:"progressDetail"`
	Error *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errorDetail"`
	ErrorMessage string `json:"error"`
}

type layer struct {
	status         string
	current, total int64
}

func (e *Engine) pullOnce(ctx context.Context, ref, auth string, every time.Duration, progress func(PullProgress)) (uint64, error) {
	rc, err := e.cli.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: auth})
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	layers := map[string]*layer{}
	var last time.Time
	report := func(force bool, msg string) {
		if progress == nil || (!force && time.Since(last) < every) {
			return
		}
		last = time.Now()
		progress(summarize(layers, msg))
	}
	dec := json.NewDecoder(rc)
	for {
		var m pullMessage
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return 0, fmt.Errorf("read pull stream: %w", err)
		}
		if m.Error != nil {
			return 0, &streamError{Code: m.Error.Code, Message: m.Error.Message}
		}
		if m.ErrorMessage != "" {
			return 0, &streamError{Message: m.ErrorMessage}
		}
		if m.ID == "" || strings.HasPrefix(m.Status, "Pulling from") {
			report(false, m.Status)
			continue
		}
		l := layers[m.ID]
		if l == nil {
			l = &layer{}
			layers[m.ID] = l
		}
		l.status = m.Status
		switch {
		case m.Status == "Downloading" && m.Progress != nil:
			l.current, l.total = m.Progress.Current, m.Progress.Total
		case m.Status == "Download complete" || m.Status == "Pull complete" || m.Status == "Already exists":
			if l.total > 0 {
				l.current = l.total
			}
		}
		report(false, m.Status)
	}
	p := summarize(layers, "pull complete")
	report(true, "pull complete")
	return p.CurrentBytes, nil
}

func summarize(layers map[string]*layer, msg string) PullProgress {
	ids := make([]string, 0, len(layers))
	for id := range layers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	p := PullProgress{Message: msg}
	for _, id := range ids {
		l := layers[id]
		p.Layers = append(p.Layers, LayerProgress{ID: id, Status: l.status, CurrentBytes: uint64(max(l.current, 0)), TotalBytes: uint64(max(l.total, 0))})
		p.CurrentBytes += uint64(max(l.current, 0))
		p.TotalBytes += uint64(max(l.total, 0))
	}
	return p
}
