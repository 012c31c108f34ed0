package adminsvc

import (
	"context"
	"encoding/base64"
	"strconv"
	"strings"

	"github.com/molecule-ai/tenant-agent/controlplane/cperr"
	"github.com/molecule-ai/tenant-agent/controlplane/rollout"
	"github.com/molecule-ai/tenant-agent/controlplane/store"
	controlplanev1 "github.com/molecule-ai/tenant-agent/gen/controlplane/v1"
)

func (s *service) ListRollouts(ctx context.Context, req *controlplanev1.ListRolloutsRequest) (*controlplanev1.ListRolloutsResponse, error) {
	size, err := checkPageSize(req.GetPageSize(), defaultPageSize, maxPageSize)
	if err == nil {
		err = checkOptionalName("runtime", req.GetRuntime())
	}
	if err != nil {
		return nil, s.status(err)
	}
	state, ok := rolloutStateOf(req.GetState())
	if !ok {
		return nil, s.status(cperr.Invalid("state %d is not a rollout state", req.GetState()))
	}
	offset := 0
	if req.GetPageToken() != "" {
		if offset, err = decodeOffsetToken(req.GetPageToken()); err != nil {
			return nil, s.status(errBadPageToken)
		}
	}
	all, err := s.cfg.Rollouts.List(ctx, req.GetRuntime(), state)
	if err != nil {
		return nil, s.status(err)
	}
	resp := &controlplanev1.ListRolloutsResponse{}
	page := all[min(offset, len(all)):]
	if len(page) > size {
		page = page[:size]
		resp.NextPageToken = encodeOffsetToken(offset + size)
	}
	for _, ro := range page {
		_, counts, err := s.cfg.Rollouts.Get(ctx, ro.ID)
		if err != nil {
			return nil, s.status(err)
		}
		resp.Rollouts = append(resp.Rollouts, rolloutProto(ro, counts))
	}
	return resp, nil
}

func (s *service) GetRollout(ctx context.Context, req *controlplanev1.GetRolloutRequest) (*controlplanev1.GetRolloutResponse, error) {
	if err := checkID("rollout_id", req.GetRolloutId(), true); err != nil {
		return nil, s.status(err)
	}
	ro, counts, err := s.cfg.Rollouts.Get(ctx, req.GetRolloutId())
	if err != nil {
		return nil, s.status(err)
	}
	return &controlplanev1.GetRolloutResponse{Rollout: rolloutProto(ro, counts)}, nil
}

func (s *service) WatchRollout(req *controlplanev1.WatchRolloutRequest, stream controlplanev1.AdminService_WatchRolloutServer) error {
	if err := checkID("rollout_id", req.GetRolloutId(), true); err != nil {
		return s.status(err)
	}
	err := s.cfg.Rollouts.Watch(stream.Context(), req.GetRolloutId(), func(ev *rollout.Event, ro *store.Rollout) error {
		resp := &controlplanev1.WatchRolloutResponse{}
		if ev != nil {
			resp.Event = rolloutEventProto(*ev)
		}
		if ro != nil {
			var counts rollout.Counts
			if ev != nil && ev.Counts != nil {
				counts = *ev.Counts
			}
			resp.Rollout = rolloutProto(*ro, counts)
		}
		return stream.Send(resp)
	})
	if ctxErr := stream.Context().Err(); ctxErr != nil {
		return s.status(ctxErr) // the watcher left, not the rollout
	}
	return s.status(err)
}

func (s *service) AbortRollout(ctx context.Context, req *controlplanev1.AbortRolloutRequest) (*controlplanev1.AbortRolloutResponse, error) {
	if err := firstErr(checkID("rollout_id", req.GetRolloutId(), true), checkReason(req.GetReason())); err != nil {
		return nil, s.status(err)
	}
	ro, canceled, err := s.cfg.Rollouts.Abort(ctx, req.GetRolloutId(), req.GetReason(), caller(ctx))
	if err != nil {
		return nil, s.status(err)
	}
	_, counts, _ := s.cfg.Rollouts.Get(ctx, ro.ID)
	return &controlplanev1.AbortRolloutResponse{Rollout: rolloutProto(ro, counts), Canceled: uint32(canceled)}, nil
}

func (s *service) ResumeRollout(ctx context.Context, req *controlplanev1.ResumeRolloutRequest) (*controlplanev1.ResumeRolloutResponse, error) {
	if err := checkID("rollout_id", req.GetRolloutId(), true); err != nil {
		return nil, s.status(err)
	}
	ro, err := s.cfg.Rollouts.ResumeHalted(ctx, req.GetRolloutId(), caller(ctx))
	if err != nil {
		return nil, s.status(err)
	}
	_, counts, _ := s.cfg.Rollouts.Get(ctx, ro.ID)
	return &controlplanev1.ResumeRolloutResponse{Rollout: rolloutProto(ro, counts)}, nil
}

// The rollouts' page token is an offset: rollouts are few and listed
// whole from the store.
func encodeOffsetToken(n int) string {
	return base64.RawURLEncoding.EncodeToString([]byte("off:" + strconv.Itoa(n)))
}

func decodeOffsetToken(tok string) (int, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || !strings.HasPrefix(string(b), "off:") {
		return 0, errBadPageToken
	}
	n, err := strconv.Atoi(string(b[4:]))
	if err != nil || n < 0 {
		return 0, errBadPageToken
	}
	return n, nil
}
