package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// publicFile marks a cached image that was pulled without credentials:
// anyone on the node may use it.
const publicFile = "public"

// A cached image pulled with credentials is private: a later sandbox may
// use the cached copy only after the registry has accepted that sandbox's
// own credentials for it (the kubelet's "ensure secret pulled images",
// KEP-2535). Otherwise a sandbox without a pull secret — or with a wrong
// one — would boot a private image because another sandbox pulled it
// first. The check is one manifest HEAD by digest per image and credential
// set; the credential sets that passed are remembered in memory (after an
// agent restart each is checked once again).

// credentialKey identifies the credentials and transport options a pull
// presents, without keeping them.
func (o PullOptions) credentialKey() string {
	h := sha256.New()
	field := func(b []byte) {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	for _, s := range []string{o.Auth.Username, o.Auth.Password, fmt.Sprint(o.Insecure)} {
		field([]byte(s))
	}
	field(o.CABundle)
	for _, doc := range o.Auth.DockerConfigs {
		field(doc)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// anonymous reports whether the options carry no credentials.
func (o PullOptions) anonymous() bool {
	return o.Auth.Username == "" && o.Auth.Password == "" && len(o.Auth.DockerConfigs) == 0
}

// recordAccess notes who may use the cached image h after a successful
// pull with opts.
func (c *Cache) recordAccess(h v1.Hash, opts PullOptions) error {
	if opts.anonymous() {
		return os.WriteFile(filepath.Join(c.imageDir(h), publicFile), nil, 0o644)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.verified[h.Hex] == nil {
		c.verified[h.Hex] = map[string]bool{}
	}
	c.verified[h.Hex][opts.credentialKey()] = true
	return nil
}

// checkAccess lets a caller use the cached image h of r when the image is
// public, when its credentials were accepted for it before, or when the
// registry accepts them now (a HEAD of the manifest by digest). Under
// PullNever the registry is not asked, so a private image needs
// credentials accepted before.
func (c *Cache) checkAccess(ctx context.Context, r name.Reference, h v1.Hash, opts PullOptions, policy sandboxv1alpha1.PullPolicy) error {
	if _, err := os.Stat(filepath.Join(c.imageDir(h), publicFile)); err == nil {
		return nil
	}
	key := opts.credentialKey()
	c.mu.Lock()
	ok := c.verified[h.Hex][key]
	c.mu.Unlock()
	if ok {
		return nil
	}
	if policy == sandboxv1alpha1.PullNever {
		return fmt.Errorf("%w: %s is cached from a pull with other credentials, and pull policy Never does not let the node check these with the registry", ErrUnauthorized, r.Name())
	}
	ro, _, err := c.remoteOptions(opts, r.Context())
	if err != nil {
		return err
	}
	if _, err := remote.Head(r.Context().Digest(h.String()), append(ro, remote.WithContext(ctx))...); err != nil {
		return fmt.Errorf("failed to pull %s: %w", r.Name(), classify(err))
	}
	return c.recordAccess(h, opts)
}
