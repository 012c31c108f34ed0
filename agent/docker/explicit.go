package docker

import (
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"
)

// ExplicitLabel records which of a container's Config values were set
// when it was created, as opposed to inherited from its image. Inspect
// output merges the two, so a value set explicitly but equal to the image's
// default looks inherited; this label says otherwise. The agent puts it on
// every container it creates; whoever else creates containers may set it
// with Explicit.
const ExplicitLabel = "tenant-agent.explicit"

// agentLabelPrefix marks the agent's own labels, which never carry over
// from one container to its replacement as if the user had set them.
const agentLabelPrefix = "tenant-agent."

// Config fields the explicit set can name (Healthcheck fields one by one,
// as the Engine merges them one by one with the image's).
const (
	fieldCmd          = "Cmd"
	fieldEntrypoint   = "Entrypoint"
	fieldWorkingDir   = "WorkingDir"
	fieldUser         = "User"
	fieldStopSignal   = "StopSignal"
	fieldShell        = "Shell"
	fieldHealthTest   = "Healthcheck.Test"
	fieldHealthIntvl  = "Healthcheck.Interval"
	fieldHealthTmout  = "Healthcheck.Timeout"
	fieldHealthStart  = "Healthcheck.StartPeriod"
	fieldHealthStIntv = "Healthcheck.StartInterval"
	fieldHealthRetry  = "Healthcheck.Retries"
)

// explicitSet is the label's content: the Config fields, env keys, label
// keys, exposed ports and volumes set at create. Compact JSON, empty parts
// left out.
type explicitSet struct {
	Fields  []string `json:"f,omitempty"`
	Env     []string `json:"env,omitempty"`
	Labels  []string `json:"l,omitempty"`
	Ports   []string `json:"p,omitempty"`
	Volumes []string `json:"v,omitempty"`
}

// Explicit is the ExplicitLabel value for a create request's Config: every
// value it sets counts as explicit. Listing a value that differs from the
// image anyway is harmless.
func Explicit(requested *container.Config) string {
	var s explicitSet
	for _, f := range configFields(requested) {
		if !f.zero() {
			s.Fields = append(s.Fields, f.name)
		}
	}
	s.Env = envKeys(requested.Env)
	for k := range requested.Labels {
		if !strings.HasPrefix(k, agentLabelPrefix) {
			s.Labels = append(s.Labels, k)
		}
	}
	for p := range requested.ExposedPorts {
		s.Ports = append(s.Ports, string(p))
	}
	s.Volumes = slices.Collect(maps.Keys(requested.Volumes))
	return s.encode()
}

func (s explicitSet) encode() string {
	for _, l := range []*[]string{&s.Fields, &s.Env, &s.Labels, &s.Ports, &s.Volumes} {
		slices.Sort(*l)
		*l = slices.Compact(*l)
	}
	b, _ := json.Marshal(s)
	return string(b)
}

// parseExplicit reads the label; a missing or unreadable one lists nothing.
func parseExplicit(labels map[string]string) explicitSet {
	var s explicitSet
	if v, ok := labels[ExplicitLabel]; ok {
		_ = json.Unmarshal([]byte(v), &s)
	}
	return s
}

// boundField is a field read from one config.
type boundField struct {
	name  string
	value any
	isSet bool
}

func (b boundField) zero() bool { return !b.isSet }

// configFields lists the scalar-like fields of cfg the image may default,
// with whether cfg sets them.
func configFields(cfg *container.Config) []boundField {
	out := []boundField{
		{fieldCmd, []string(cfg.Cmd), len(cfg.Cmd) > 0},
		{fieldEntrypoint, []string(cfg.Entrypoint), len(cfg.Entrypoint) > 0},
		{fieldWorkingDir, cfg.WorkingDir, cfg.WorkingDir != ""},
		{fieldUser, cfg.User, cfg.User != ""},
		{fieldStopSignal, cfg.StopSignal, cfg.StopSignal != ""},
		{fieldShell, []string(cfg.Shell), len(cfg.Shell) > 0},
	}
	if h := cfg.Healthcheck; h != nil {
		out = append(out,
			boundField{fieldHealthTest, h.Test, len(h.Test) > 0},
			boundField{fieldHealthIntvl, h.Interval, h.Interval != 0},
			boundField{fieldHealthTmout, h.Timeout, h.Timeout != 0},
			boundField{fieldHealthStart, h.StartPeriod, h.StartPeriod != 0},
			boundField{fieldHealthStIntv, h.StartInterval, h.StartInterval != 0},
			boundField{fieldHealthRetry, h.Retries, h.Retries != 0},
		)
	}
	return out
}

// explicitValues decides, for a container's inspect Config, which values
// were set at create: those the label lists, and those that differ from
// the image's default (only the image and the creator set Config values,
// so a value the image does not have was set at create).
type explicitValues struct {
	listed explicitSet
	img    *container.Config
}

func (x explicitValues) field(f, image boundField) bool {
	name, value := f.name, f.value
	return slices.Contains(x.listed.Fields, name) || !reflect.DeepEqual(value, image.value)
}

func (x explicitValues) env(key, value string) bool {
	if slices.Contains(x.listed.Env, key) {
		return true
	}
	iv, ok := envValue(x.img.Env, key)
	return !ok || iv != value
}

func (x explicitValues) label(key, value string) bool {
	if slices.Contains(x.listed.Labels, key) {
		return true
	}
	iv, ok := x.img.Labels[key]
	return !ok || iv != value
}

func (x explicitValues) port(p nat.Port) bool {
	_, inImage := x.img.ExposedPorts[p]
	return !inImage || slices.Contains(x.listed.Ports, string(p))
}

func (x explicitValues) volume(path string) bool {
	_, inImage := x.img.Volumes[path]
	return !inImage || slices.Contains(x.listed.Volumes, path)
}

// ambiguous is the label for a replacement created with cfg (only its
// explicit values) on an image with config img: the explicit values equal
// to the image's defaults, the only ones a later inspect cannot tell from
// inherited. Without img, everything explicit is listed.
func ambiguous(cfg, img *container.Config) string {
	if img == nil {
		return Explicit(cfg)
	}
	var s explicitSet
	imgFields := map[string]any{}
	for _, f := range configFields(img) {
		imgFields[f.name] = f.value
	}
	for _, f := range configFields(cfg) {
		if f.isSet && reflect.DeepEqual(f.value, imgFields[f.name]) {
			s.Fields = append(s.Fields, f.name)
		}
	}
	for _, e := range cfg.Env {
		k, v, _ := strings.Cut(e, "=")
		if iv, ok := envValue(img.Env, k); ok && iv == v {
			s.Env = append(s.Env, k)
		}
	}
	for k, v := range cfg.Labels {
		if iv, ok := img.Labels[k]; ok && iv == v && !strings.HasPrefix(k, agentLabelPrefix) {
			s.Labels = append(s.Labels, k)
		}
	}
	for p := range cfg.ExposedPorts {
		if _, ok := img.ExposedPorts[p]; ok {
			s.Ports = append(s.Ports, string(p))
		}
	}
	for v := range cfg.Volumes {
		if _, ok := img.Volumes[v]; ok {
			s.Volumes = append(s.Volumes, v)
		}
	}
	return s.encode()
}

func envKeys(env []string) []string {
	keys := make([]string, 0, len(env))
	for _, e := range env {
		k, _, _ := strings.Cut(e, "=")
		keys = append(keys, k)
	}
	return keys
}

func envValue(env []string, key string) (string, bool) {
	for _, e := range env {
		if k, v, _ := strings.Cut(e, "="); k == key {
			return v, true
		}
	}
	return "", false
}
