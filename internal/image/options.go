package image

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// DefaultPlatform is the platform picked from multi-platform images when
// PullOptions.Platform is empty: the guest kernel is amd64.
const DefaultPlatform = "linux/amd64"

// userAgent identifies the node agent to registries.
const userAgent = "sandbox-operator-node-agent"

// PullOptions says how to resolve and fetch one reference. The node agent
// fills it from the Sandbox's spec and status; all values are plain data.
type PullOptions struct {
	// Policy is spec.imagePullPolicy. Empty means IfNotPresent.
	Policy sandboxv1alpha1.PullPolicy

	// PinnedDigest is status.imageDigest ("sha256:<hex>"). When set, the
	// image is taken by this digest and the reference's tag is never
	// resolved again, so a restart boots the image the sandbox first ran.
	PinnedDigest string

	// Auth holds the registry credentials. The zero value is anonymous.
	Auth Auth

	// Insecure is spec.registry.insecure: plain HTTP is allowed and TLS
	// certificates are not verified.
	Insecure bool

	// CABundle holds PEM certificates (spec.registry.caBundleRef's value)
	// trusted for the registry in addition to the node's trust store.
	CABundle []byte

	// Platform is "os/arch[/variant]" picked from multi-platform images.
	// Empty means DefaultPlatform.
	Platform string
}

// policy returns the effective pull policy.
func (o PullOptions) policy() (sandboxv1alpha1.PullPolicy, error) {
	switch o.Policy {
	case "":
		return sandboxv1alpha1.PullIfNotPresent, nil
	case sandboxv1alpha1.PullIfNotPresent, sandboxv1alpha1.PullAlways, sandboxv1alpha1.PullNever:
		return o.Policy, nil
	}
	return "", fmt.Errorf("%w: unknown pull policy %q", ErrInvalidReference, o.Policy)
}

// platform returns the effective platform.
func (o PullOptions) platform() (v1.Platform, error) {
	s := o.Platform
	if s == "" {
		s = DefaultPlatform
	}
	p, err := v1.ParsePlatform(s)
	if err != nil {
		return v1.Platform{}, fmt.Errorf("%w: platform %q: %w", ErrInvalidReference, s, err)
	}
	return *p, nil
}

// reference parses ref and applies PinnedDigest to it.
func (o PullOptions) reference(ref string) (name.Reference, error) {
	var nopts []name.Option
	if o.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidReference, err)
	}
	if o.PinnedDigest == "" {
		return r, nil
	}
	if _, err := v1.NewHash(o.PinnedDigest); err != nil {
		return nil, fmt.Errorf("%w: pinned digest %q: %w", ErrInvalidReference, o.PinnedDigest, err)
	}
	if d, ok := r.(name.Digest); ok && d.DigestStr() != o.PinnedDigest {
		return nil, fmt.Errorf("%w: %q names digest %s but the pinned digest is %s",
			ErrInvalidReference, ref, d.DigestStr(), o.PinnedDigest)
	}
	return r.Context().Digest(o.PinnedDigest), nil
}

// flightKey identifies an Ensure call for deduplication: callers share a
// pull only when they would have sent the same requests with the same
// credentials, so one caller's secret never serves another's request.
func (o PullOptions) flightKey(r name.Reference) string {
	h := sha256.New()
	field := func(b []byte) {
		// Length-prefixed, so that no two different option sets collide.
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	for _, s := range []string{r.Name(), string(o.Policy), o.PinnedDigest, o.Platform,
		fmt.Sprint(o.Insecure), o.Auth.Username, o.Auth.Password} {
		field([]byte(s))
	}
	field(o.CABundle)
	for _, doc := range o.Auth.DockerConfigs {
		field(doc)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// remoteOptions builds the go-containerregistry options for these pull
// options against the registry of repo, and returns the platform to pick.
func (c *Cache) remoteOptions(o PullOptions, repo name.Repository) ([]remote.Option, v1.Platform, error) {
	platform, err := o.platform()
	if err != nil {
		return nil, v1.Platform{}, err
	}
	auth, err := o.Auth.authenticator(repo)
	if err != nil {
		return nil, v1.Platform{}, err
	}
	tr, err := c.transport(o.Insecure, o.CABundle)
	if err != nil {
		return nil, v1.Platform{}, err
	}
	return []remote.Option{
		remote.WithTransport(tr),
		remote.WithAuth(auth),
		remote.WithPlatform(platform),
		remote.WithUserAgent(userAgent),
	}, platform, nil
}

// transport returns an HTTP transport for the TLS settings, shared between
// pulls with the same settings so that connections are reused.
func (c *Cache) transport(insecure bool, caBundle []byte) (http.RoundTripper, error) {
	sum := sha256.Sum256(caBundle)
	key := fmt.Sprintf("%t/%x", insecure, sum)

	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.transports[key]; ok {
		return t, nil
	}

	var t *http.Transport
	if base, ok := remote.DefaultTransport.(*http.Transport); ok {
		t = base.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment}
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(caBundle) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(caBundle) {
			return nil, fmt.Errorf("%w: the CA bundle holds no PEM certificate", ErrInvalidReference)
		}
		cfg.RootCAs = pool
	}
	// registry.insecure is the user's explicit request to skip verification.
	cfg.InsecureSkipVerify = insecure
	t.TLSClientConfig = cfg
	c.transports[key] = t
	return t, nil
}

// Auth is the registry credentials for one pull: either a user name and
// password, or the dockerconfigjson documents of the Sandbox's
// imagePullSecrets, from which the entry for the image's registry is taken.
type Auth struct {
	// Username and Password are basic credentials; when Username is set
	// they win over DockerConfigs.
	Username string
	Password string

	// DockerConfigs are the ".dockerconfigjson" values of
	// kubernetes.io/dockerconfigjson Secrets (or ".dockercfg" values of the
	// legacy kubernetes.io/dockercfg type), in the order of
	// imagePullSecrets. The first with an entry matching the registry is used.
	DockerConfigs [][]byte
}

// authenticator returns the credentials to present to repo's registry.
func (a Auth) authenticator(repo name.Repository) (authn.Authenticator, error) {
	if a.Username != "" {
		return authn.FromConfig(authn.AuthConfig{Username: a.Username, Password: a.Password}), nil
	}
	for i, doc := range a.DockerConfigs {
		entries, err := parseDockerConfig(doc)
		if err != nil {
			return nil, fmt.Errorf("%w: pull secret %d: %w", ErrInvalidReference, i, err)
		}
		cfg, ok, err := matchDockerConfig(entries, repo)
		if err != nil {
			return nil, fmt.Errorf("%w: pull secret %d: %w", ErrInvalidReference, i, err)
		}
		if ok {
			return authn.FromConfig(cfg), nil
		}
	}
	return authn.Anonymous, nil
}
