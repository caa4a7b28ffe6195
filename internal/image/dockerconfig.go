package image

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// dockerConfigEntry is one registry's entry in a dockerconfigjson document.
type dockerConfigEntry struct {
	Auth          string `json:"auth,omitempty"`
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
	RegistryToken string `json:"registrytoken,omitempty"`
}

// parseDockerConfig reads a ".dockerconfigjson" document ({"auths": {...}})
// or a legacy ".dockercfg" one (the same map without the "auths" wrapper).
func parseDockerConfig(doc []byte) (map[string]dockerConfigEntry, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(doc, &top); err != nil {
		return nil, fmt.Errorf("failed to parse docker config: %w", err)
	}
	raw := doc
	if auths, ok := top["auths"]; ok {
		raw = auths
	}
	var entries map[string]dockerConfigEntry
	if err := json.Unmarshal(raw, &entries); err != nil {
		return nil, fmt.Errorf("failed to parse docker config auths: %w", err)
	}
	return entries, nil
}

// dockerHubHosts are the names under which Docker Hub's credentials are
// stored; go-containerregistry calls the registry index.docker.io.
var dockerHubHosts = map[string]bool{
	"docker.io":            true,
	"index.docker.io":      true,
	"registry-1.docker.io": true,
}

// matchDockerConfig picks the entry for repo, the way the kubelet does:
// keys are a registry host (with port, optionally a scheme, and a "*"
// wildcard per DNS label) and an optional repository path prefix; the
// longest matching path prefix wins, and an exact host beats a wildcard.
func matchDockerConfig(entries map[string]dockerConfigEntry, repo name.Repository) (authn.AuthConfig, bool, error) {
	host := strings.ToLower(repo.RegistryStr())
	repoPath := repo.RepositoryStr()

	best, bestScore := "", -1
	for key := range entries {
		keyHost, keyPath := splitDockerConfigKey(key)
		exact := keyHost == host
		if !exact && !matchHostGlob(keyHost, host) {
			continue
		}
		if keyPath != "" && repoPath != keyPath && !strings.HasPrefix(repoPath, keyPath+"/") {
			continue
		}
		score := 2 * len(keyPath)
		if exact {
			score++
		}
		// Ties (the same key spelt two ways) go to the smaller key, so the
		// choice does not depend on map order.
		if score > bestScore || (score == bestScore && key < best) {
			best, bestScore = key, score
		}
	}
	if bestScore < 0 {
		return authn.AuthConfig{}, false, nil
	}

	e := entries[best]
	cfg := authn.AuthConfig{
		Username:      e.Username,
		Password:      e.Password,
		IdentityToken: e.IdentityToken,
		RegistryToken: e.RegistryToken,
	}
	if e.Auth != "" {
		dec, err := base64.StdEncoding.DecodeString(e.Auth)
		if err != nil {
			return authn.AuthConfig{}, false, fmt.Errorf("entry %q: auth is not base64: %w", best, err)
		}
		user, pass, ok := strings.Cut(string(dec), ":")
		if !ok {
			return authn.AuthConfig{}, false, fmt.Errorf("entry %q: auth is not user:password", best)
		}
		cfg.Username, cfg.Password = user, pass
	}
	return cfg, true, nil
}

// splitDockerConfigKey turns "https://registry:5000/team/" into
// ("registry:5000", "team"). Docker Hub's keys ("https://index.docker.io/v1/")
// map to index.docker.io with no path.
func splitDockerConfigKey(key string) (host, repoPath string) {
	k := strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
	k = strings.Trim(k, "/")
	host, repoPath, _ = strings.Cut(k, "/")
	host = strings.ToLower(host)
	if dockerHubHosts[host] {
		host = name.DefaultRegistry
		if repoPath == "v1" || repoPath == "v2" {
			repoPath = ""
		}
	}
	return host, repoPath
}

// matchHostGlob matches "*.example.com" against "a.example.com" label by
// label; ports must be equal.
func matchHostGlob(pattern, host string) bool {
	if !strings.Contains(pattern, "*") {
		return false
	}
	pHost, pPort, _ := strings.Cut(pattern, ":")
	hHost, hPort, _ := strings.Cut(host, ":")
	if pPort != hPort {
		return false
	}
	pLabels, hLabels := strings.Split(pHost, "."), strings.Split(hHost, ".")
	if len(pLabels) != len(hLabels) {
		return false
	}
	for i := range pLabels {
		if ok, err := path.Match(pLabels[i], hLabels[i]); err != nil || !ok {
			return false
		}
	}
	return true
}
