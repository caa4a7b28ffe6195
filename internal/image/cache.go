package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"

	"github.com/go-logr/logr"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// File and directory names inside the cache root.
const (
	imagesDir  = "sha256"
	refsDir    = "refs"
	tmpDir     = "tmp"
	rootfsFile = "rootfs.ext4"
	configFile = "config.json"
)

// Image is a cached, ready-to-boot image.
type Image struct {
	// Digest is the image manifest's digest, "sha256:<hex>": what
	// status.imageDigest pins and SandboxNode.status.cachedImages lists.
	Digest string
	// RootfsPath is the ext4 file holding the flattened image. It is shared
	// by every sandbox using the image and must be attached read-only.
	RootfsPath string
	// Config is the part of the image's config the guest needs.
	Config Config
}

// Config is the runtime part of an OCI image config: the defaults that
// spec.runtime and spec.env override.
type Config struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	User       string
}

// Cache resolves, pulls and keeps images as ext4 root filesystems under one
// directory. It is safe for concurrent use. One Cache (one node agent)
// owns a root: New empties its scratch directory.
type Cache struct {
	root string
	mkfs string

	ensures group[Image] // by reference and options
	builds  group[Image] // by manifest digest

	mu         sync.Mutex
	transports map[string]*http.Transport
	// verified holds, per private image (digest hex), the credential sets
	// the registry accepted for it (see access.go).
	verified map[string]map[string]bool
}

// Option configures a Cache.
type Option func(*Cache)

// WithMkfs sets the mkfs.ext4 executable. The default is "mkfs.ext4" on
// PATH.
func WithMkfs(path string) Option {
	return func(c *Cache) { c.mkfs = path }
}

// New returns a Cache rooted at root, creating it if needed and removing
// work left behind by a previous process.
func New(root string, opts ...Option) (*Cache, error) {
	c := &Cache{root: root, mkfs: "mkfs.ext4", transports: map[string]*http.Transport{}, verified: map[string]map[string]bool{}}
	for _, o := range opts {
		o(c)
	}
	if _, err := exec.LookPath(c.mkfs); err != nil {
		return nil, fmt.Errorf("failed to find mkfs.ext4 (e2fsprogs): %w", err)
	}
	if err := os.RemoveAll(filepath.Join(root, tmpDir)); err != nil {
		return nil, fmt.Errorf("failed to clean image scratch space: %w", err)
	}
	for _, d := range []string{imagesDir, refsDir, tmpDir} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, fmt.Errorf("failed to create image cache: %w", err)
		}
	}
	return c, nil
}

// Close releases idle registry connections. Calls in flight are not
// interrupted; cancel their contexts for that.
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.transports {
		t.CloseIdleConnections()
	}
}

// Resolve returns the digest of the image manifest that Ensure would use for
// ref, contacting the registry only when the policy and the cache require
// it: never for Never, when PinnedDigest is set and cached, or for a tag
// already cached under IfNotPresent. An image index resolves to the
// manifest for the platform.
func (c *Cache) Resolve(ctx context.Context, ref string, opts PullOptions) (string, error) {
	r, policy, err := c.parse(ref, opts)
	if err != nil {
		return "", err
	}
	if d, ok := c.resolveLocal(r, policy); ok {
		if err := c.checkAccess(ctx, r, d, opts, policy); err != nil {
			return "", err
		}
		return d.String(), nil
	}
	if policy == sandboxv1alpha1.PullNever {
		return "", fmt.Errorf("%w: %s", ErrNotCached, r.Name())
	}
	ro, platform, err := c.remoteOptions(opts, r.Context())
	if err != nil {
		return "", err
	}
	src, err := resolveRemote(ctx, r, ro, platform)
	if err != nil {
		return "", fmt.Errorf("failed to resolve %s: %w", r.Name(), err)
	}
	return src.digest.String(), nil
}

// Ensure returns the image for ref, pulling and building it when the cache
// does not hold it. A cached image costs no registry request unless the
// policy is Always and ref is a tag, which is then resolved again (one
// manifest GET) while the root filesystem of an unchanged digest is reused.
// Concurrent calls for the same image share one pull and one mkfs; progress,
// when not nil, receives the download's bytes done and total.
func (c *Cache) Ensure(ctx context.Context, ref string, opts PullOptions, progress ProgressFunc) (Image, error) {
	r, policy, err := c.parse(ref, opts)
	if err != nil {
		return Image{}, err
	}
	log := logr.FromContextOrDiscard(ctx).WithValues("image", r.Name())

	if d, ok := c.resolveLocal(r, policy); ok {
		img, err := c.lookup(d)
		if err == nil {
			if err := c.checkAccess(ctx, r, d, opts, policy); err != nil {
				return Image{}, err
			}
			log.V(4).Info("Using cached image", "digest", img.Digest)
			return img, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return Image{}, err
		}
	}
	if policy == sandboxv1alpha1.PullNever {
		return Image{}, fmt.Errorf("%w: %s", ErrNotCached, r.Name())
	}

	return c.ensures.do(ctx, opts.flightKey(r), progress, func(ctx context.Context, report ProgressFunc) (Image, error) {
		ro, platform, err := c.remoteOptions(opts, r.Context())
		if err != nil {
			return Image{}, err
		}
		src, err := resolveRemote(ctx, r, ro, platform)
		if err != nil {
			return Image{}, fmt.Errorf("failed to pull %s: %w", r.Name(), err)
		}
		img, err := c.lookup(src.digest)
		if errors.Is(err, fs.ErrNotExist) {
			img, err = c.builds.do(ctx, src.digest.Hex, report, func(ctx context.Context, report ProgressFunc) (Image, error) {
				return c.build(logr.NewContext(ctx, log), ro, src, report)
			})
		}
		if err != nil {
			return Image{}, err
		}
		if err := c.recordAccess(src.digest, opts); err != nil {
			log.Error(err, "Failed to record who may use the image", "digest", src.digest.String())
		}
		if err := c.recordRef(r, src.digest); err != nil {
			// The image is usable; only the next IfNotPresent lookup of
			// this tag will contact the registry again.
			log.Error(err, "Failed to record the image's digest", "digest", src.digest.String())
		}
		return img, nil
	})
}

// Cached lists the digests of the images the cache holds, sorted, for
// SandboxNode.status.cachedImages.
func (c *Cache) Cached() []string {
	entries, err := os.ReadDir(filepath.Join(c.root, imagesDir))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		h, err := v1.NewHash("sha256:" + e.Name())
		if err != nil || !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(c.root, imagesDir, e.Name(), rootfsFile)); err == nil {
			out = append(out, h.String())
		}
	}
	slices.Sort(out)
	return out
}

// parse validates the reference and options.
func (c *Cache) parse(ref string, opts PullOptions) (name.Reference, sandboxv1alpha1.PullPolicy, error) {
	policy, err := opts.policy()
	if err != nil {
		return nil, "", err
	}
	if _, err := opts.platform(); err != nil {
		return nil, "", err
	}
	r, err := opts.reference(ref)
	if err != nil {
		return nil, "", err
	}
	return r, policy, nil
}

// resolveLocal answers from the cache alone: a digest reference is itself
// (or the platform manifest an index digest resolved to before); a tag is
// what it last resolved to, unless the policy is Always. The answer counts
// only when that image is cached.
func (c *Cache) resolveLocal(r name.Reference, policy sandboxv1alpha1.PullPolicy) (v1.Hash, bool) {
	var candidates []v1.Hash
	if d, ok := r.(name.Digest); ok {
		if h, err := v1.NewHash(d.DigestStr()); err == nil {
			candidates = append(candidates, h)
		}
	} else if policy == sandboxv1alpha1.PullAlways {
		return v1.Hash{}, false
	}
	if h, ok := c.readRef(r); ok {
		candidates = append(candidates, h)
	}
	for _, h := range candidates {
		if _, err := os.Stat(filepath.Join(c.imageDir(h), rootfsFile)); err == nil {
			return h, true
		}
	}
	return v1.Hash{}, false
}

func (c *Cache) imageDir(h v1.Hash) string {
	return filepath.Join(c.root, imagesDir, h.Hex)
}

// lookup loads a cached image; the error wraps fs.ErrNotExist when the
// cache does not hold it.
func (c *Cache) lookup(h v1.Hash) (Image, error) {
	dir := c.imageDir(h)
	rootfs := filepath.Join(dir, rootfsFile)
	if _, err := os.Stat(rootfs); err != nil {
		return Image{}, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, configFile))
	if err != nil {
		return Image{}, fmt.Errorf("failed to read cached image config: %w", err)
	}
	cfg, err := parseConfig(raw)
	if err != nil {
		return Image{}, err
	}
	return Image{Digest: h.String(), RootfsPath: rootfs, Config: cfg}, nil
}

func parseConfig(raw []byte) (Config, error) {
	var cf v1.ConfigFile
	if err := json.Unmarshal(raw, &cf); err != nil {
		return Config{}, fmt.Errorf("%w: failed to parse image config: %w", ErrInvalidImage, err)
	}
	return Config{
		Entrypoint: cf.Config.Entrypoint,
		Cmd:        cf.Config.Cmd,
		Env:        cf.Config.Env,
		WorkingDir: cf.Config.WorkingDir,
		User:       cf.Config.User,
	}, nil
}

// refRecord is the content of a refs/ file.
type refRecord struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
}

func (c *Cache) refPath(r name.Reference) string {
	sum := sha256.Sum256([]byte(r.Name()))
	return filepath.Join(c.root, refsDir, hex.EncodeToString(sum[:]))
}

func (c *Cache) readRef(r name.Reference) (v1.Hash, bool) {
	raw, err := os.ReadFile(c.refPath(r))
	if err != nil {
		return v1.Hash{}, false
	}
	var rec refRecord
	if json.Unmarshal(raw, &rec) != nil || rec.Ref != r.Name() {
		return v1.Hash{}, false
	}
	h, err := v1.NewHash(rec.Digest)
	return h, err == nil
}

// recordRef remembers what a tag (or an index digest) resolved to. A digest
// reference that is the manifest itself needs no record.
func (c *Cache) recordRef(r name.Reference, h v1.Hash) error {
	if d, ok := r.(name.Digest); ok && d.DigestStr() == h.String() {
		return nil
	}
	if cur, ok := c.readRef(r); ok && cur == h {
		return nil
	}
	raw, err := json.Marshal(refRecord{Ref: r.Name(), Digest: h.String()})
	if err != nil {
		return err
	}
	return c.writeAtomic(c.refPath(r), raw)
}

// writeAtomic writes a file under a temporary name in the scratch directory,
// syncs it and renames it into place.
func (c *Cache) writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Join(c.root, tmpDir), "write-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	// Gone after a successful rename; otherwise scratch that New removes.
	defer func() { _ = os.Remove(tmp) }()
	_, werr := f.Write(data)
	serr := f.Sync()
	if err := errors.Join(werr, serr, f.Close()); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
