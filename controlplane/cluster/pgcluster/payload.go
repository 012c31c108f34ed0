package pgcluster

import (
	"encoding/base64"
	"errors"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	tenantagentv1 "github.com/molecule-ai/tenant-agent/gen/tenantagent/v1"
)

// The wire: short text payloads on two kinds of channel.
//
//	ta_all           "<kind> <origin> <args…>", to every replica
//	ta_r_<replica>   "d <identity>" | "k <identity> <command-id>", to one
//
// Broadcast kinds: s (session claimed: identity epoch), g (session
// released: identity epoch), c (commands changed: ids…), p (progress:
// base64 of the binary CommandProgress), a (agents changed: ids…), x
// (state changed). A payload is only ever a hint: the receiver parses it
// defensively and re-reads the store.
const (
	channelAll    = "ta_all"
	channelPrefix = "ta_r_"

	kindClaimed  = 's'
	kindReleased = 'g'
	kindCommands = 'c'
	kindProgress = 'p'
	kindAgents   = 'a'
	kindState    = 'x'
	kindDeliver  = 'd'
	kindCancel   = 'k'
	kindReplaced = 'r' // local only: an event for the handler, never sent

	// maxPayload keeps every payload under NOTIFY's 8000-byte limit.
	maxPayload = 7900
	// maxToken bounds one identity or ID in a payload (a SPIFFE ID is at
	// most 2048 bytes); longer ones are neither sent nor accepted.
	maxToken = 2048
)

// channelOf is replica's own doorbell channel.
func channelOf(replica string) string { return channelPrefix + replica }

// validToken reports whether s can travel as one space-separated word:
// non-empty, bounded, printable ASCII-or-above with no spaces or controls.
func validToken(s string) bool {
	if s == "" || len(s) > maxToken {
		return false
	}
	for i := 0; i < len(s); i++ {
		if b := s[i]; b <= ' ' || b == 0x7f {
			return false
		}
	}
	return true
}

// validReplica reports whether id is a replica ID: 1-40 of [a-z0-9_], so
// it can be part of a channel name (at most 63 bytes) unquoted.
func validReplica(id string) bool {
	if id == "" || len(id) > 40 {
		return false
	}
	for i := 0; i < len(id); i++ {
		b := id[i]
		if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '_') {
			return false
		}
	}
	return true
}

// message is one parsed payload.
type message struct {
	kind     byte
	origin   string // broadcasts only
	identity string
	epoch    int64
	id       string   // k: the command
	ids      []string // c, a
	progress *tenantagentv1.CommandProgress
}

var errMalformed = errors.New("malformed payload")

// parseBroadcast parses a ta_all payload. Anything not exactly as sent is
// errMalformed: a bad payload is dropped whole, never half applied.
func parseBroadcast(payload string) (message, error) {
	if len(payload) > 8000 {
		return message{}, errMalformed
	}
	f := strings.Split(payload, " ")
	if len(f) < 2 || len(f[0]) != 1 || !validReplica(f[1]) {
		return message{}, errMalformed
	}
	m := message{kind: f[0][0], origin: f[1]}
	args := f[2:]
	switch m.kind {
	case kindClaimed, kindReleased:
		if len(args) != 2 || !validToken(args[0]) {
			return message{}, errMalformed
		}
		e, err := strconv.ParseInt(args[1], 10, 64)
		if err != nil || e <= 0 {
			return message{}, errMalformed
		}
		m.identity, m.epoch = args[0], e
	case kindCommands, kindAgents:
		if len(args) == 0 {
			return message{}, errMalformed
		}
		for _, id := range args {
			if !validToken(id) {
				return message{}, errMalformed
			}
		}
		m.ids = args
	case kindProgress:
		if len(args) != 1 {
			return message{}, errMalformed
		}
		b, err := base64.StdEncoding.DecodeString(args[0])
		if err != nil {
			return message{}, errMalformed
		}
		p := &tenantagentv1.CommandProgress{}
		if err := proto.Unmarshal(b, p); err != nil || !validToken(p.GetCommandId()) {
			return message{}, errMalformed
		}
		m.progress = p
	case kindState:
		if len(args) != 0 {
			return message{}, errMalformed
		}
	default:
		return message{}, errMalformed
	}
	return m, nil
}

// parseDoorbell parses a payload on this replica's own channel.
func parseDoorbell(payload string) (message, error) {
	if len(payload) > 8000 {
		return message{}, errMalformed
	}
	f := strings.Split(payload, " ")
	if len(f[0]) != 1 {
		return message{}, errMalformed
	}
	m := message{kind: f[0][0]}
	switch {
	case m.kind == kindDeliver && len(f) == 2 && validToken(f[1]):
		m.identity = f[1]
	case m.kind == kindCancel && len(f) == 3 && validToken(f[1]) && validToken(f[2]):
		m.identity, m.id = f[1], f[2]
	default:
		return message{}, errMalformed
	}
	return m, nil
}

// sessionPayload is the claim or release broadcast.
func sessionPayload(kind byte, origin, identity string, epoch int64) string {
	return string(kind) + " " + origin + " " + identity + " " + strconv.FormatInt(epoch, 10)
}

// splitIDs packs ids into as few "<kind> <origin> id…" payloads as fit
// under maxPayload.
func splitIDs(kind byte, origin string, ids []string) []string {
	prefix := string(kind) + " " + origin
	var out []string
	var b strings.Builder
	for _, id := range ids {
		if b.Len() > 0 && b.Len()+1+len(id) > maxPayload {
			out = append(out, b.String())
			b.Reset()
		}
		if b.Len() == 0 {
			b.WriteString(prefix)
		}
		b.WriteByte(' ')
		b.WriteString(id)
	}
	if b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}

// progressPayload encodes p, or returns "" if it would not fit.
func progressPayload(origin string, p *tenantagentv1.CommandProgress) (string, error) {
	b, err := proto.Marshal(p)
	if err != nil {
		return "", err
	}
	prefix := string(kindProgress) + " " + origin + " "
	if len(prefix)+base64.StdEncoding.EncodedLen(len(b)) > maxPayload {
		return "", nil
	}
	return prefix + base64.StdEncoding.EncodeToString(b), nil
}
