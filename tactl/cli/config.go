package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// The config file holds defaults for the global flags, by flag name:
//
//	addr: cp.example:7444
//	cert: operator.pem         # relative paths are relative to the file
//	key: operator-key.pem
//	ca: ca.pem
//	server-name: cp.example
//	timeout: 10m
//	progress: auto
//
// or the same keys in JSON. A flag wins over TACTL_<NAME>, which wins over
// the file.
var configKeys = []string{"addr", "cert", "key", "ca", "server-name", "timeout", "progress", "output"}

// pathKeys are resolved relative to the config file's folder.
var pathKeys = map[string]bool{"cert": true, "key": true, "ca": true}

// defaultConfigPaths are where tactl looks when --config and TACTL_CONFIG
// are not set: <user config dir>/tactl/config.yaml, then config.json.
func defaultConfigPaths() []string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return nil
	}
	return []string{filepath.Join(dir, "tactl", "config.yaml"), filepath.Join(dir, "tactl", "config.json")}
}

// loadConfig reads the config file: path if given (it must exist), else
// the first default path that exists, else none.
func loadConfig(path string) (map[string]string, string, error) {
	explicit := path != ""
	paths := []string{path}
	if !explicit {
		paths = defaultConfigPaths()
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			if !explicit && os.IsNotExist(err) {
				continue
			}
			return nil, p, usagef("config file: %v", err)
		}
		raw := map[string]any{}
		if strings.HasSuffix(p, ".json") {
			err = json.Unmarshal(b, &raw)
		} else {
			err = yaml.Unmarshal(b, &raw)
		}
		if err != nil {
			return nil, p, usagef("config file %s: %v", p, err)
		}
		out := map[string]string{}
		var unknown []string
		for k, v := range raw {
			if !contains(configKeys, k) {
				unknown = append(unknown, k)
				continue
			}
			s := fmt.Sprint(v)
			if pathKeys[k] && s != "" {
				s = expandPath(s, filepath.Dir(p))
			}
			out[k] = s
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			return nil, p, usagef("config file %s: unknown keys %s (known: %s)", p, strings.Join(unknown, ", "), strings.Join(configKeys, ", "))
		}
		return out, p, nil
	}
	return nil, "", nil
}

func expandPath(p, base string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			p = filepath.Join(home, strings.TrimPrefix(p, "~"))
		}
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(base, p)
	}
	return p
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// envName is the environment variable of a flag: server-name gives
// TACTL_SERVER_NAME.
func envName(flag string) string {
	return "TACTL_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyDefaults sets every global flag not given on the command line from
// its TACTL_* variable, else from the config file.
func applyDefaults(fs *pflag.FlagSet, names []string, cfg map[string]string, cfgPath string) error {
	for _, name := range names {
		f := fs.Lookup(name)
		if f == nil || f.Changed {
			continue
		}
		if v, ok := os.LookupEnv(envName(name)); ok {
			if err := f.Value.Set(v); err != nil {
				return usagef("%s=%q is not a valid --%s: %v", envName(name), v, name, err)
			}
			continue
		}
		if v, ok := cfg[name]; ok {
			if err := f.Value.Set(v); err != nil {
				return usagef("config file %s: %s: %q is not a valid --%s: %v", cfgPath, name, v, name, err)
			}
		}
	}
	return nil
}
