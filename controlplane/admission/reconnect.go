package admission

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/molecule-ai/tenant-agent/pkg/identity"
)

// Reconnects limits how often each agent identity may open a stream: a
// burst, then one per interval. Without it one identity reconnecting in a
// loop replaces its own session hundreds of times a second and keeps the
// store busy recording it.
type Reconnects struct {
	burst    int
	interval time.Duration
	logger   *slog.Logger
	now      func() time.Time

	mu       sync.Mutex
	limiters map[string]*identityLimiter
	refused  uint64
}

type identityLimiter struct {
	*rate.Limiter
	loggedAt time.Time
}

// NewReconnects allows burst streams per identity, then one per interval.
func NewReconnects(burst int, interval time.Duration, logger *slog.Logger) *Reconnects {
	if logger == nil {
		logger = slog.Default()
	}
	return &Reconnects{burst: burst, interval: interval, logger: logger.With("component", "admission"), now: time.Now,
		limiters: map[string]*identityLimiter{}}
}

// Admit refuses a stream that comes too soon after the identity's last
// ones with ResourceExhausted and a RetryInfo saying when to come back.
func (r *Reconnects) Admit(_ context.Context, id identity.Identity) error {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	l, ok := r.limiters[id.ID]
	if !ok {
		r.prune(now)
		l = &identityLimiter{Limiter: rate.NewLimiter(rate.Every(r.interval), r.burst)}
		r.limiters[id.ID] = l
	}
	res := l.ReserveN(now, 1)
	delay := res.DelayFrom(now)
	if delay == 0 {
		return nil
	}
	res.CancelAt(now) // a refused attempt does not use up a later slot
	r.refused++
	if now.Sub(l.loggedAt) >= r.interval {
		l.loggedAt = now
		r.logger.Warn("agent reconnecting too often; refused", "agent", id.ID, "retry_after", delay.Round(time.Millisecond).Seconds())
	}
	return retryLater(fmt.Sprintf("agent %s reconnects too often (at most %d at once, then one per %s); retry in %s", id.ID, r.burst, r.interval, delay.Round(time.Millisecond)), delay)
}

// Refused is how many streams were refused so far.
func (r *Reconnects) Refused() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refused
}

// prune drops identities whose bucket has refilled, which behave exactly
// like new ones, so the map holds only identities seen recently.
func (r *Reconnects) prune(now time.Time) {
	if len(r.limiters) < 1024 || len(r.limiters)&1023 != 0 {
		return
	}
	for id, l := range r.limiters {
		if l.TokensAt(now) >= float64(r.burst) {
			delete(r.limiters, id)
		}
	}
}

// retryLater is ResourceExhausted with a RetryInfo the agent honours.
func retryLater(msg string, after time.Duration) error {
	st := status.New(codes.ResourceExhausted, msg)
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(max(after.Round(time.Millisecond), time.Millisecond))}); err == nil {
		st = d
	}
	return st.Err()
}
