package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
)

const (
	// maxParallelLayers bounds concurrent layer downloads per pull.
	maxParallelLayers = 3
	// progressStep is how many downloaded bytes pass between progress
	// reports (the last byte is always reported).
	progressStep = 1 << 20
	// maxConfigSize bounds the image config blob read into memory.
	maxConfigSize = 8 << 20

	mib = 1 << 20
	// mkfsSlackMiB is added to the estimated content for ext4's own
	// metadata (group descriptors, bitmaps, inode tables).
	mkfsSlackMiB = 64
	// inodeSize is the ext4 inode size mkfs is asked for; also counted in
	// the size estimate.
	inodeSize = 256
)

// source is a resolved image manifest, ready to be built.
type source struct {
	repo     name.Repository
	digest   v1.Hash
	manifest *v1.Manifest
}

// resolveRemote fetches ref's manifest (one GET) and, for an image index,
// the manifest for the platform in ro (a second GET by digest).
func resolveRemote(ctx context.Context, r name.Reference, ro []remote.Option, platform v1.Platform) (source, error) {
	p, err := remote.NewPuller(ro...)
	if err != nil {
		return source{}, err
	}
	desc, err := p.Get(ctx, r)
	if err != nil {
		return source{}, classify(err)
	}

	var img v1.Image
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return source{}, classify(err)
		}
		img, err = imageForPlatform(idx, platform)
		if err != nil {
			return source{}, err
		}
	case desc.MediaType.IsSchema1():
		return source{}, fmt.Errorf("%w: Docker schema 1 manifests are not supported", ErrInvalidImage)
	default:
		img, err = desc.Image()
		if err != nil {
			return source{}, classify(err)
		}
	}

	digest, err := img.Digest()
	if err != nil {
		return source{}, classify(err)
	}
	m, err := img.Manifest()
	if err != nil {
		return source{}, classify(err)
	}
	if !m.MediaType.IsImage() && m.MediaType != "" {
		return source{}, fmt.Errorf("%w: %s is a %s, not an image manifest", ErrInvalidImage, digest, m.MediaType)
	}
	return source{repo: r.Context(), digest: digest, manifest: m}, nil
}

// imageForPlatform picks the index's first image manifest for the platform.
func imageForPlatform(idx v1.ImageIndex, want v1.Platform) (v1.Image, error) {
	descs, err := partial.FindManifests(idx, match.Platforms(want))
	if err != nil {
		return nil, classify(err)
	}
	for _, d := range descs {
		if d.MediaType.IsImage() {
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, classify(err)
			}
			return img, nil
		}
	}
	return nil, fmt.Errorf("%w: the image index has no manifest for platform %s", ErrNotFound, want.String())
}

// build pulls src's config and layers, flattens them and packs the result
// with mkfs.ext4 into the cache.
func (c *Cache) build(ctx context.Context, ro []remote.Option, src source, report ProgressFunc) (Image, error) {
	log := logr.FromContextOrDiscard(ctx).WithValues("digest", src.digest.String())
	// Another process or an earlier flight may have finished it meanwhile.
	if img, err := c.lookup(src.digest); err == nil {
		return img, nil
	}

	start := time.Now()
	work, err := os.MkdirTemp(filepath.Join(c.root, tmpDir), "build-")
	if err != nil {
		return Image{}, fmt.Errorf("failed to create scratch directory: %w", err)
	}
	defer func() {
		if err := os.RemoveAll(work); err != nil {
			log.Error(err, "Failed to remove scratch directory", "path", work)
		}
	}()

	p, err := remote.NewPuller(ro...)
	if err != nil {
		return Image{}, err
	}
	rawConfig, err := fetchConfig(ctx, p, src)
	if err != nil {
		return Image{}, fmt.Errorf("failed to pull %s: %w", src.repo.Digest(src.digest.String()).Name(), err)
	}
	cfg, err := parseConfig(rawConfig)
	if err != nil {
		return Image{}, err
	}

	log.Info("Pulling image layers", "layers", len(src.manifest.Layers))
	layers, err := download(ctx, p, src, filepath.Join(work, "layers"), report)
	if err != nil {
		return Image{}, fmt.Errorf("failed to pull %s: %w", src.repo.Digest(src.digest.String()).Name(), err)
	}

	rootDir := filepath.Join(work, "rootfs")
	if err := os.Mkdir(rootDir, 0o755); err != nil {
		return Image{}, err
	}
	// MkdirTemp's 0700 and the umask must not reach the guest's "/".
	if err := os.Chmod(rootDir, 0o755); err != nil {
		return Image{}, err
	}
	flat := mutate.Extract(layersImage{layers: layers})
	stats, err := extractTar(ctx, flat, rootDir)
	if cerr := flat.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return Image{}, fmt.Errorf("failed to unpack %s: %w", src.digest, err)
	}
	if err := os.RemoveAll(filepath.Join(work, "layers")); err != nil {
		return Image{}, err
	}

	out := filepath.Join(work, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Image{}, err
	}
	if err := c.mkfsExt4(ctx, rootDir, filepath.Join(out, rootfsFile), stats); err != nil {
		return Image{}, err
	}
	if err := writeSynced(filepath.Join(out, configFile), rawConfig); err != nil {
		return Image{}, err
	}
	if err := os.Chmod(out, 0o755); err != nil {
		return Image{}, err
	}

	// The rename publishes the complete entry at once. If another process
	// won the race, its entry is as good as ours.
	dst := c.imageDir(src.digest)
	if err := os.Rename(out, dst); err != nil {
		if _, serr := os.Stat(filepath.Join(dst, rootfsFile)); serr != nil {
			return Image{}, fmt.Errorf("failed to publish image: %w", err)
		}
	}
	if d, err := os.Open(filepath.Dir(dst)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	log.Info("Built root filesystem", "duration", time.Since(start).Round(time.Millisecond).String(),
		"contentBytes", stats.bytes, "inodes", stats.inodes)
	return Image{Digest: src.digest.String(), RootfsPath: filepath.Join(dst, rootfsFile), Config: cfg}, nil
}

func fetchConfig(ctx context.Context, p *remote.Puller, src source) ([]byte, error) {
	l, err := p.Layer(ctx, src.repo.Digest(src.manifest.Config.Digest.String()))
	if err != nil {
		return nil, classify(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, classify(err)
	}
	defer func() { _ = rc.Close() }()
	// Reading to EOF makes go-containerregistry verify the digest.
	raw, err := io.ReadAll(io.LimitReader(rc, maxConfigSize+1))
	if err != nil {
		return nil, classify(err)
	}
	if len(raw) > maxConfigSize {
		return nil, fmt.Errorf("%w: image config is larger than %d bytes", ErrInvalidImage, maxConfigSize)
	}
	return raw, nil
}

// download fetches src's layers (each digest once, a few at a time) into
// dir, reporting compressed bytes, and returns them as local layers in
// manifest order. go-containerregistry verifies each blob's size and digest
// as it is read.
func download(ctx context.Context, p *remote.Puller, src source, dir string, report ProgressFunc) ([]v1.Layer, error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	descs := src.manifest.Layers
	unique := map[v1.Hash]v1.Descriptor{}
	var total int64
	for _, d := range descs {
		if _, ok := unique[d.Digest]; !ok {
			unique[d.Digest] = d
			total += d.Size
		}
	}
	prog := &progress{total: total, report: report}
	prog.add(0)

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(maxParallelLayers)
	for h := range unique {
		g.Go(func() error {
			return fetchBlob(gctx, p, src.repo.Digest(h.String()), filepath.Join(dir, h.Hex), prog)
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	layers := make([]v1.Layer, 0, len(descs))
	for _, d := range descs {
		l, err := partial.CompressedToLayer(&fileLayer{path: filepath.Join(dir, d.Digest.Hex), desc: d})
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	return layers, nil
}

func fetchBlob(ctx context.Context, p *remote.Puller, ref name.Digest, path string, prog *progress) (err error) {
	l, err := p.Layer(ctx, ref)
	if err != nil {
		return classify(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return classify(err)
	}
	defer func() { _ = rc.Close() }()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if _, err := io.Copy(f, &countingReader{r: rc, prog: prog}); err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return fmt.Errorf("failed to download layer %s: %w", ref.DigestStr(), classify(err))
	}
	return nil
}

// progress aggregates the bytes of concurrent downloads and reports them
// every progressStep bytes and at the end.
type progress struct {
	mu       sync.Mutex
	done     int64
	total    int64
	reported int64
	report   ProgressFunc
}

func (p *progress) add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if p.report != nil && (n == 0 || p.done-p.reported >= progressStep || p.done == p.total) {
		p.reported = p.done
		p.report(p.done, p.total)
	}
}

type countingReader struct {
	r    io.Reader
	prog *progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if n > 0 {
		c.prog.add(int64(n))
	}
	return n, err
}

// fileLayer is a downloaded (and already verified) compressed layer.
type fileLayer struct {
	path string
	desc v1.Descriptor
}

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }
func (l *fileLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }

// layersImage is the v1.Image that mutate.Extract reads: it calls Layers
// and nothing else. Building a full image with mutate.AppendLayers instead
// would decompress every layer once more to compute its diff ID.
type layersImage struct {
	v1.Image // nil: any other method panics, and mutate.Extract calls none
	layers   []v1.Layer
}

func (i layersImage) Layers() ([]v1.Layer, error) { return i.layers, nil }

// mkfsExt4 packs dir into an ext4 file sized from stats: the content's
// blocks and inode tables plus a fifth, plus mkfsSlackMiB.
//
// Beyond the design's `mkfs.ext4 -q -F -d DIR -L rootfs FILE SIZE`:
//   - -b 4096 -I 256: without them mke2fs picks its "small" profile below
//     512 MiB (1 KiB blocks, 128-byte inodes whose timestamps end in 2038);
//   - -N: the default inode ratio (one per 16 KiB) runs out on images of
//     many small files, so the inode count comes from the tree;
//   - -m 0 and no journal: the file is read-only in the guest, so reserved
//     blocks and a journal would be dead weight in every cached image.
func (c *Cache) mkfsExt4(ctx context.Context, dir, file string, stats fsStats) error {
	inodes := stats.inodes + stats.inodes/5 + 1024
	content := stats.bytes + stats.inodes*inodeSize
	sizeMiB := (content*6/5+mib-1)/mib + mkfsSlackMiB
	cmd := exec.CommandContext(ctx, c.mkfs,
		"-q", "-F",
		"-b", strconv.Itoa(blockSize), "-I", strconv.Itoa(inodeSize),
		"-N", strconv.FormatInt(inodes, 10),
		"-m", "0", "-O", "^has_journal",
		"-d", dir, "-L", "rootfs",
		file, strconv.FormatInt(sizeMiB, 10)+"M")
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return fmt.Errorf("failed to run mkfs.ext4 (%d MiB, %d inodes): %w: %s", sizeMiB, inodes, err, out)
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	serr := f.Sync()
	return errors.Join(serr, f.Close())
}

// writeSynced writes data to a new file and syncs it.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	serr := f.Sync()
	return errors.Join(werr, serr, f.Close())
}
