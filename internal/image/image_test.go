package image

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// node is one file of a layer written to disk: a directory when path ends
// in "/", a symlink when symlink is set, a hard link to an earlier path when
// hardlink is set, else a regular file.
type node struct {
	path     string
	body     string
	mode     os.FileMode
	uid, gid int
	symlink  string
	hardlink string
}

// writeTree writes nodes into a new directory, with their modes and owners.
func writeTree(t *testing.T, nodes ...node) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range nodes {
		p := filepath.Join(dir, n.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case n.symlink != "":
			err = os.Symlink(n.symlink, p)
		case n.hardlink != "":
			err = os.Link(filepath.Join(dir, n.hardlink), p)
		case n.path[len(n.path)-1] == '/':
			err = os.MkdirAll(p, 0o755)
		default:
			err = os.WriteFile(p, []byte(n.body), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
		if n.symlink == "" && n.hardlink == "" {
			mode := n.mode
			if mode == 0 {
				mode = 0o644
				if n.path[len(n.path)-1] == '/' {
					mode = 0o755
				}
			}
			if err := os.Lchown(p, n.uid, n.gid); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// testImage is two layers built from files on disk, the second overriding a
// file, whiting out another and making a directory opaque, and a third
// with a file capability.
func testImage(t *testing.T) v1.Image {
	t.Helper()
	base := writeTree(t,
		node{path: "etc/motd", body: "base motd\n"},
		node{path: "etc/hostname", body: "base\n"},
		node{path: "opt/app/old.txt", body: "hidden by the opaque dir\n"},
		node{path: "bin/tool", body: "#!/bin/sh\necho tool\n", mode: 0o755},
		node{path: "bin/suid", body: "suid\n", mode: 0o755 | os.ModeSetuid},
		node{path: "bin/sh-link", symlink: "tool"},
		node{path: "usr/bin/abs", symlink: "/bin/tool"},
		node{path: "home/user/", mode: 0o700, uid: 1000, gid: 1000},
		node{path: "home/user/data", body: "owned\n", mode: 0o640, uid: 1000, gid: 1000},
		node{path: "usr/lib/libx.so.1", body: "library\n"},
		node{path: "usr/lib/libx-hard.so", hardlink: "usr/lib/libx.so.1"},
		node{path: "var/empty/", mode: 0o711},
	)
	upper := writeTree(t,
		node{path: "etc/motd", body: "layer two\n"},
		node{path: "etc/.wh.hostname"},
		node{path: "etc/added", body: "added\n"},
		node{path: "opt/app/.wh..wh..opq"},
		node{path: "opt/app/new.txt", body: "new\n"},
	)
	// cap_net_raw+ep, as setcap writes it (VFS_CAP_REVISION_2).
	capNetRaw := string([]byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	capabilities := tarEntries(t, entry{name: "bin/ping", body: "ping\n", mode: 0o755,
		pax: map[string]string{"SCHILY.xattr.security.capability": capNetRaw}})
	return imageOf(t, v1.Config{
		Entrypoint: []string{"/bin/tool"},
		Cmd:        []string{"--flag"},
		Env:        []string{"PATH=/usr/bin:/bin", "GREETING=hello"},
		WorkingDir: "/home/user",
		User:       "1000:1000",
	}, DefaultPlatform, layerOf(t, tarDir(t, base)), layerOf(t, tarDir(t, upper)), layerOf(t, capabilities))
}

func TestEnsureBuildsTheRootFilesystem(t *testing.T) {
	g := NewWithT(t)
	reg := newRegistry(t, false)
	img := testImage(t)
	digest := reg.push(t, "test/app:v1", img)
	c, mkfsRuns := newTestCache(t)

	var mu sync.Mutex
	var reports [][2]int64
	got, err := c.Ensure(context.Background(), reg.host+"/test/app:v1", PullOptions{}, func(done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		reports = append(reports, [2]int64{done, total})
	})
	g.Expect(err).NotTo(HaveOccurred())

	g.Expect(got.Digest).To(Equal(digest.String()))
	g.Expect(got.RootfsPath).To(Equal(filepath.Join(c.root, "sha256", digest.Hex, "rootfs.ext4")))
	g.Expect(filepath.Join(c.root, "sha256", digest.Hex, "config.json")).To(BeARegularFile())
	g.Expect(got.Config).To(Equal(Config{
		Entrypoint: []string{"/bin/tool"},
		Cmd:        []string{"--flag"},
		Env:        []string{"PATH=/usr/bin:/bin", "GREETING=hello"},
		WorkingDir: "/home/user",
		User:       "1000:1000",
	}))
	g.Expect(c.Cached()).To(Equal([]string{digest.String()}))
	g.Expect(mkfsRuns()).To(Equal(1))
	g.Expect(os.ReadDir(filepath.Join(c.root, "tmp"))).To(BeEmpty(), "scratch space is cleaned up")

	layers, err := img.Layers()
	g.Expect(err).NotTo(HaveOccurred())
	var compressed int64
	for _, l := range layers {
		size, err := l.Size()
		g.Expect(err).NotTo(HaveOccurred())
		compressed += size
	}
	g.Expect(reports).NotTo(BeEmpty())
	g.Expect(reports[0]).To(Equal([2]int64{0, compressed}), "the first report announces the total")
	g.Expect(reports[len(reports)-1]).To(Equal([2]int64{compressed, compressed}), "the last report is complete")

	rootfs := got.RootfsPath
	fsck, err := exec.Command("e2fsck", "-fn", rootfs).CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), "e2fsck finds the file system consistent: %s", fsck)

	tests := []struct {
		name  string
		path  string
		check func(g Gomega, s ext4Stat)
	}{
		{"the root directory is 0755 and owned by root", "/", func(g Gomega, s ext4Stat) {
			g.Expect(s.mode).To(Equal("0755"))
			g.Expect(s.uid).To(Equal(0))
		}},
		{"a file of the upper layer replaces the lower one", "/etc/motd", func(g Gomega, s ext4Stat) {
			g.Expect(catExt4(t, rootfs, "/etc/motd")).To(Equal("layer two\n"))
		}},
		{"a file added by the upper layer is there", "/etc/added", func(g Gomega, s ext4Stat) {
			g.Expect(catExt4(t, rootfs, "/etc/added")).To(Equal("added\n"))
		}},
		{"a whiteout removes the lower layer's file", "/etc/hostname", func(g Gomega, s ext4Stat) {
			g.Expect(s.exists).To(BeFalse())
		}},
		{"whiteout markers themselves are not in the image", "/etc/.wh.hostname", func(g Gomega, s ext4Stat) {
			g.Expect(s.exists).To(BeFalse())
		}},
		{"an opaque directory hides the lower layer's entries and keeps its own", "/opt/app", func(g Gomega, s ext4Stat) {
			g.Expect(s.typ).To(Equal("directory"))
			g.Expect(lsExt4(t, rootfs, "/opt/app")).To(Equal([]string{"new.txt"}))
		}},
		{"an executable keeps mode 0755", "/bin/tool", func(g Gomega, s ext4Stat) {
			g.Expect(s.typ).To(Equal("regular"))
			g.Expect(s.mode).To(Equal("0755"))
			g.Expect(catExt4(t, rootfs, "/bin/tool")).To(Equal("#!/bin/sh\necho tool\n"))
		}},
		{"a setuid file keeps its setuid bit", "/bin/suid", func(g Gomega, s ext4Stat) {
			g.Expect(s.mode).To(Equal("04755"))
		}},
		{"a relative symlink keeps its target", "/bin/sh-link", func(g Gomega, s ext4Stat) {
			g.Expect(s.typ).To(Equal("symlink"))
			g.Expect(s.target).To(Equal("tool"))
		}},
		{"an absolute symlink keeps its target", "/usr/bin/abs", func(g Gomega, s ext4Stat) {
			g.Expect(s.typ).To(Equal("symlink"))
			g.Expect(s.target).To(Equal("/bin/tool"))
		}},
		{"a file owned by uid 1000 keeps its owner and mode", "/home/user/data", func(g Gomega, s ext4Stat) {
			g.Expect(s.uid).To(Equal(1000))
			g.Expect(s.gid).To(Equal(1000))
			g.Expect(s.mode).To(Equal("0640"))
		}},
		{"a directory owned by uid 1000 keeps its owner and mode", "/home/user", func(g Gomega, s ext4Stat) {
			g.Expect(s.uid).To(Equal(1000))
			g.Expect(s.mode).To(Equal("0700"))
		}},
		{"a directory keeps an unusual mode", "/var/empty", func(g Gomega, s ext4Stat) {
			g.Expect(s.mode).To(Equal("0711"))
		}},
		{"a hard link shares its target's inode", "/usr/lib/libx-hard.so", func(g Gomega, s ext4Stat) {
			target := statExt4(t, rootfs, "/usr/lib/libx.so.1")
			g.Expect(s.inode).To(Equal(target.inode))
			g.Expect(s.links).To(Equal(2))
		}},
		{"a file capability is kept as an extended attribute", "/bin/ping", func(g Gomega, s ext4Stat) {
			out, _ := debugfs(t, rootfs, "ea_list /bin/ping")
			g.Expect(out).To(ContainSubstring("security.capability (20) = 01 00 00 02 00 20 00 00"))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := statExt4(t, rootfs, tt.path)
			if tt.path != "/etc/hostname" && tt.path != "/etc/.wh.hostname" {
				NewWithT(t).Expect(s.exists).To(BeTrue(), "%s is in the image", tt.path)
			}
			tt.check(NewWithT(t), s)
		})
	}
}

func TestEnsureHonoursThePullPolicy(t *testing.T) {
	const (
		tag    = "tag"
		first  = "first"
		second = "second"
	)
	tests := []struct {
		name string
		// warm pulls the tag (IfNotPresent) before the call under test.
		warm bool
		// moveTag pushes a second image under the tag after warming.
		moveTag bool
		// byDigest refers to the first image by digest instead of by tag.
		byDigest bool
		pinFirst bool
		policy   sandboxv1alpha1.PullPolicy

		wantErr       error
		wantImage     string   // first or second
		wantTotal     int      // requests of any kind; -1 to skip
		wantManifests []string // GETs by tag or by the first/second digest
		wantBlobs     bool     // whether any blob is fetched
		wantMkfs      int
	}{
		{
			name: "a second Ensure of the same digest is a cache hit without registry traffic",
			warm: true, byDigest: true,
			wantImage: first, wantTotal: 0,
		},
		{
			name: "IfNotPresent with a cached tag does not contact the registry even if the tag moved",
			warm: true, moveTag: true, policy: sandboxv1alpha1.PullIfNotPresent,
			wantImage: first, wantTotal: 0,
		},
		{
			name: "Always resolves the tag again and reuses the cached root filesystem",
			warm: true, policy: sandboxv1alpha1.PullAlways,
			wantImage: first, wantTotal: -1, wantManifests: []string{tag},
		},
		{
			name: "Always pulls the image a moved tag now names",
			warm: true, moveTag: true, policy: sandboxv1alpha1.PullAlways,
			wantImage: second, wantTotal: -1, wantManifests: []string{tag}, wantBlobs: true, wantMkfs: 1,
		},
		{
			name: "a pinned digest ignores a moved tag even with Always",
			warm: true, moveTag: true, pinFirst: true, policy: sandboxv1alpha1.PullAlways,
			wantImage: first, wantTotal: 0,
		},
		{
			name:    "a pinned digest that is not cached is pulled by digest, not by the moved tag",
			moveTag: true, pinFirst: true,
			wantImage: first, wantTotal: -1, wantManifests: []string{first}, wantBlobs: true, wantMkfs: 1,
		},
		{
			name: "Never with a cached tag needs no registry",
			warm: true, policy: sandboxv1alpha1.PullNever,
			wantImage: first, wantTotal: 0,
		},
		{
			name:    "Never without a cached image fails with ErrNotCached",
			policy:  sandboxv1alpha1.PullNever,
			wantErr: ErrNotCached, wantTotal: 0,
		},
		{
			name:     "Never with an uncached digest fails with ErrNotCached",
			byDigest: true, policy: sandboxv1alpha1.PullNever,
			wantErr: ErrNotCached, wantTotal: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			ctx := context.Background()
			reg := newRegistry(t, false)
			c, mkfsRuns := newTestCache(t)
			digests := map[string]string{first: reg.push(t, "test/app:v1", smallImage(t, "one")).String()}
			ref := reg.host + "/test/app:v1"
			if tt.warm {
				_, err := c.Ensure(ctx, ref, PullOptions{}, nil)
				g.Expect(err).NotTo(HaveOccurred())
			}
			if tt.moveTag {
				digests[second] = reg.push(t, "test/app:v1", smallImage(t, "two")).String()
			}
			opts := PullOptions{Policy: tt.policy}
			if tt.byDigest {
				ref = reg.host + "/test/app@" + digests[first]
			}
			if tt.pinFirst {
				opts.PinnedDigest = digests[first]
			}
			reg.reset()
			runsBefore := mkfsRuns()

			got, err := c.Ensure(ctx, ref, opts, nil)

			if tt.wantErr != nil {
				g.Expect(err).To(MatchError(tt.wantErr))
			} else {
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(got.Digest).To(Equal(digests[tt.wantImage]))
				g.Expect(catExt4(t, got.RootfsPath, "/id")).To(Equal(map[string]string{first: "one\n", second: "two\n"}[tt.wantImage]))
			}
			traffic := reg.traffic()
			if tt.wantTotal >= 0 {
				g.Expect(traffic.total).To(Equal(tt.wantTotal), "requests: %v", reg.requests)
			}
			wantManifests := []string{}
			for _, m := range tt.wantManifests {
				if m == tag {
					wantManifests = append(wantManifests, "v1")
				} else {
					wantManifests = append(wantManifests, digests[m])
				}
			}
			g.Expect(traffic.manifests).To(ConsistOf(wantManifests))
			if tt.wantBlobs {
				g.Expect(traffic.blobs).NotTo(BeEmpty())
			} else {
				g.Expect(traffic.blobs).To(BeEmpty())
			}
			g.Expect(mkfsRuns() - runsBefore).To(Equal(tt.wantMkfs))
		})
	}
}

func TestEnsureReportsErrors(t *testing.T) {
	reg := newRegistry(t, false)
	reg.push(t, "test/app:v1", smallImage(t, "one"))
	reg.push(t, "test/escape:v1", imageOf(t, v1.Config{}, DefaultPlatform,
		layerOf(t, tarEntries(t, entry{name: "ok", body: "fine\n"}, entry{name: "../escape", body: "out\n"}))))

	// A port nothing listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedHost := l.Addr().String()
	_ = l.Close()

	tests := []struct {
		name        string
		ref         string
		opts        PullOptions
		wantErr     error
		wantMessage string
	}{
		{
			name: "a missing tag fails with ErrNotFound and the registry's message",
			ref:  reg.host + "/test/app:missing", wantErr: ErrNotFound, wantMessage: "MANIFEST_UNKNOWN",
		},
		{
			name: "a missing repository fails with ErrNotFound and the registry's message",
			ref:  reg.host + "/test/nothing:v1", wantErr: ErrNotFound, wantMessage: "NAME_UNKNOWN",
		},
		{
			name: "a missing digest fails with ErrNotFound",
			ref:  reg.host + "/test/app@sha256:" + fmt.Sprintf("%064d", 0), wantErr: ErrNotFound,
		},
		{
			name: "an invalid reference fails with ErrInvalidReference",
			ref:  "Not A Reference", wantErr: ErrInvalidReference,
		},
		{
			name: "a pinned digest that is not a digest fails with ErrInvalidReference",
			ref:  reg.host + "/test/app:v1", opts: PullOptions{PinnedDigest: "sha256:nothex"}, wantErr: ErrInvalidReference,
		},
		{
			name: "a pinned digest that contradicts the reference's digest fails with ErrInvalidReference",
			ref:  reg.host + "/test/app@sha256:" + fmt.Sprintf("%064d", 1),
			opts: PullOptions{PinnedDigest: "sha256:" + fmt.Sprintf("%064d", 2)}, wantErr: ErrInvalidReference,
		},
		{
			name: "an unknown pull policy fails with ErrInvalidReference",
			ref:  reg.host + "/test/app:v1", opts: PullOptions{Policy: "Sometimes"}, wantErr: ErrInvalidReference,
		},
		{
			name: "a CA bundle without certificates fails with ErrInvalidReference",
			ref:  reg.host + "/test/app:v1", opts: PullOptions{CABundle: []byte("not pem")}, wantErr: ErrInvalidReference,
		},
		{
			name: "a layer with a ../escape entry fails with ErrInvalidImage",
			ref:  reg.host + "/test/escape:v1", wantErr: ErrInvalidImage, wantMessage: "../escape",
		},
		{
			name: "an unreachable registry fails with the transport's message",
			ref:  closedHost + "/test/app:v1", wantMessage: "connection refused",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c, mkfsRuns := newTestCache(t)
			_, err := c.Ensure(context.Background(), tt.ref, tt.opts, nil)
			g.Expect(err).To(HaveOccurred())
			t.Logf("error: %v", err)
			if tt.wantErr != nil {
				g.Expect(err).To(MatchError(tt.wantErr))
			} else {
				for _, sentinel := range []error{ErrNotFound, ErrUnauthorized, ErrNotCached, ErrInvalidImage, ErrInvalidReference} {
					g.Expect(errors.Is(err, sentinel)).To(BeFalse(), "not %v", sentinel)
				}
			}
			g.Expect(err.Error()).To(ContainSubstring(tt.wantMessage))
			g.Expect(mkfsRuns()).To(BeZero())
			g.Expect(c.Cached()).To(BeEmpty())
			g.Expect(os.ReadDir(filepath.Join(c.root, "tmp"))).To(BeEmpty(), "scratch space is cleaned up")
		})
	}
}

func TestEnsureAuthenticates(t *testing.T) {
	reg := newRegistry(t, false)
	reg.user, reg.password = "alice", "s3cret"
	digest := reg.push(t, "private/app:v1", smallImage(t, "one"))
	ref := reg.host + "/private/app:v1"

	dockerConfig := func(host, user, password string) []byte {
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
		return fmt.Appendf(nil, `{"auths":{%q:{"auth":%q}}}`, host, auth)
	}

	tests := []struct {
		name    string
		auth    Auth
		wantErr error
	}{
		{name: "no credentials fail with ErrUnauthorized", wantErr: ErrUnauthorized},
		{
			name:    "wrong credentials fail with ErrUnauthorized",
			auth:    Auth{DockerConfigs: [][]byte{dockerConfig(reg.host, "alice", "wrong")}},
			wantErr: ErrUnauthorized,
		},
		{
			name: "a dockerconfigjson entry for the registry's host succeeds",
			auth: Auth{DockerConfigs: [][]byte{dockerConfig(reg.host, "alice", "s3cret")}},
		},
		{
			name: "a dockerconfigjson entry with a scheme and a path prefix succeeds",
			auth: Auth{DockerConfigs: [][]byte{dockerConfig("https://"+reg.host+"/private/", "alice", "s3cret")}},
		},
		{
			name:    "a dockerconfigjson entry for another host is not sent",
			auth:    Auth{DockerConfigs: [][]byte{dockerConfig("registry.example.com", "alice", "s3cret")}},
			wantErr: ErrUnauthorized,
		},
		{
			name: "the first pull secret with an entry for the host is used",
			auth: Auth{DockerConfigs: [][]byte{
				dockerConfig("registry.example.com", "bob", "other"),
				dockerConfig(reg.host, "alice", "s3cret"),
			}},
		},
		{name: "a username and password succeed", auth: Auth{Username: "alice", Password: "s3cret"}},
		{
			name:    "a pull secret that is not JSON fails with ErrInvalidReference",
			auth:    Auth{DockerConfigs: [][]byte{[]byte("{")}},
			wantErr: ErrInvalidReference,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c, _ := newTestCache(t)
			got, err := c.Ensure(context.Background(), ref, PullOptions{Auth: tt.auth}, nil)
			if tt.wantErr != nil {
				t.Logf("error: %v", err)
				g.Expect(err).To(MatchError(tt.wantErr))
				if errors.Is(tt.wantErr, ErrUnauthorized) {
					g.Expect(err.Error()).To(ContainSubstring("authentication required"), "the registry's message")
				}
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Digest).To(Equal(digest.String()))
		})
	}
}

func TestEnsureVerifiesTLS(t *testing.T) {
	reg := newRegistry(t, true)
	digest := reg.push(t, "test/app:v1", smallImage(t, "one"))
	ref := reg.host + "/test/app:v1"

	tests := []struct {
		name        string
		opts        PullOptions
		wantMessage string
	}{
		{name: "without the CA bundle the registry's certificate is not trusted", wantMessage: "certificate"},
		{name: "with the CA bundle the pull succeeds", opts: PullOptions{CABundle: reg.caPEM()}},
		{name: "insecure skips verification", opts: PullOptions{Insecure: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c, _ := newTestCache(t)
			got, err := c.Ensure(context.Background(), ref, tt.opts, nil)
			if tt.wantMessage != "" {
				t.Logf("error: %v", err)
				g.Expect(err).To(HaveOccurred())
				g.Expect(err.Error()).To(ContainSubstring(tt.wantMessage))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Digest).To(Equal(digest.String()))
		})
	}
}

func TestEnsureDeduplicatesConcurrentPulls(t *testing.T) {
	g := NewWithT(t)
	reg := newRegistry(t, false)
	img := testImage(t)
	digest := reg.push(t, "test/app:v1", img)
	reg.reset()
	// Hold the manifest so that all callers are waiting on one pull.
	reg.manifestDelay = 200 * time.Millisecond
	c, mkfsRuns := newTestCache(t)

	const callers = 8
	var wg sync.WaitGroup
	results := make([]Image, callers)
	errs := make([]error, callers)
	last := make([][2]int64, callers)
	start := make(chan struct{})
	for i := range callers {
		wg.Go(func() {
			<-start
			results[i], errs[i] = c.Ensure(context.Background(), reg.host+"/test/app:v1", PullOptions{},
				func(done, total int64) { last[i] = [2]int64{done, total} })
		})
	}
	close(start)
	wg.Wait()

	for i := range callers {
		g.Expect(errs[i]).NotTo(HaveOccurred())
		g.Expect(results[i]).To(Equal(results[0]))
		g.Expect(last[i][1]).To(BeNumerically(">", 0), "caller %d saw progress", i)
		g.Expect(last[i][0]).To(Equal(last[i][1]), "caller %d saw the download complete", i)
	}
	g.Expect(results[0].Digest).To(Equal(digest.String()))

	traffic := reg.traffic()
	g.Expect(traffic.manifests).To(Equal([]string{"v1"}), "one manifest GET")
	layers, err := img.Layers()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(traffic.blobs).To(HaveLen(len(layers)+1), "the config and each layer")
	for d, n := range traffic.blobs {
		g.Expect(n).To(Equal(1), "blob %s fetched once", d)
	}
	g.Expect(mkfsRuns()).To(Equal(1))
}

func TestEnsurePicksThePlatformFromAnIndex(t *testing.T) {
	reg := newRegistry(t, false)
	amd64 := smallImage(t, "amd64")
	arm64 := imageOf(t, v1.Config{}, "linux/arm64", layerOf(t, tarEntries(t, entry{name: "id", body: "arm64\n"})))
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm64, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd64, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	indexDigest := reg.pushIndex(t, "test/multi:v1", idx)
	amd64Digest, err := amd64.Digest()
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name        string
		ref         string
		platform    string
		wantErr     error
		wantContent string
	}{
		{name: "a tag naming an index resolves to the amd64 manifest", ref: "test/multi:v1", wantContent: "amd64\n"},
		{name: "an index digest resolves to the amd64 manifest", ref: "test/multi@" + indexDigest.String(), wantContent: "amd64\n"},
		{name: "another platform can be asked for", ref: "test/multi:v1", platform: "linux/arm64", wantContent: "arm64\n"},
		{name: "an index without the platform fails with ErrNotFound", ref: "test/multi:v1", platform: "linux/s390x", wantErr: ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			ctx := context.Background()
			c, _ := newTestCache(t)
			opts := PullOptions{Platform: tt.platform}

			resolved, err := c.Resolve(ctx, reg.host+"/"+tt.ref, opts)
			if tt.wantErr != nil {
				g.Expect(err).To(MatchError(tt.wantErr))
				_, err = c.Ensure(ctx, reg.host+"/"+tt.ref, opts, nil)
				g.Expect(err).To(MatchError(tt.wantErr))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(c.Cached()).To(BeEmpty(), "Resolve pulls nothing")

			got, err := c.Ensure(ctx, reg.host+"/"+tt.ref, opts, nil)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Digest).To(Equal(resolved))
			g.Expect(catExt4(t, got.RootfsPath, "/id")).To(Equal(tt.wantContent))
			if tt.platform == "" {
				g.Expect(got.Digest).To(Equal(amd64Digest.String()))
			}

			// The reference is now known locally: no registry traffic.
			reg.reset()
			again, err := c.Ensure(ctx, reg.host+"/"+tt.ref, opts, nil)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(again).To(Equal(got))
			g.Expect(reg.traffic().total).To(BeZero())
		})
	}
}

func TestNewRemovesLeftoverScratchSpace(t *testing.T) {
	g := NewWithT(t)
	mkfs, _ := mkfsCounter(t)
	root := t.TempDir()
	g.Expect(os.MkdirAll(filepath.Join(root, "tmp", "build-123", "rootfs"), 0o755)).To(Succeed())
	// A complete entry survives; a digest directory without its rootfs is
	// not listed.
	g.Expect(os.MkdirAll(filepath.Join(root, "sha256", fmt.Sprintf("%064x", 1)), 0o755)).To(Succeed())
	g.Expect(os.WriteFile(filepath.Join(root, "sha256", fmt.Sprintf("%064x", 1), "rootfs.ext4"), nil, 0o644)).To(Succeed())
	g.Expect(os.MkdirAll(filepath.Join(root, "sha256", fmt.Sprintf("%064x", 2)), 0o755)).To(Succeed())

	c, err := New(root, WithMkfs(mkfs))
	g.Expect(err).NotTo(HaveOccurred())
	defer c.Close()
	g.Expect(os.ReadDir(filepath.Join(root, "tmp"))).To(BeEmpty())
	g.Expect(c.Cached()).To(Equal([]string{"sha256:" + fmt.Sprintf("%064x", 1)}))
}

// TestCachedPrivateImageNeedsTheCallersCredentials: a private image pulled
// by one sandbox is not handed from the cache to a sandbox whose
// credentials the registry refuses (KEP-2535's rule), while a public one
// costs no registry request.
func TestCachedPrivateImageNeedsTheCallersCredentials(t *testing.T) {
	g := NewWithT(t)
	reg := newRegistry(t, false)
	reg.user, reg.password = "alice", "s3cret"
	digest := reg.push(t, "private/app:v1", smallImage(t, "one"))
	ref := reg.host + "/private/app:v1"
	right := Auth{Username: "alice", Password: "s3cret"}
	ctx := context.Background()

	c, _ := newTestCache(t)
	img, err := c.Ensure(ctx, ref, PullOptions{Auth: right}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(img.Digest).To(Equal(digest.String()))

	_, err = c.Ensure(ctx, ref, PullOptions{}, nil)
	g.Expect(err).To(MatchError(ErrUnauthorized), "no credentials: the cached private image is refused")
	_, err = c.Ensure(ctx, ref, PullOptions{Auth: Auth{Username: "alice", Password: "wrong"}}, nil)
	g.Expect(err).To(MatchError(ErrUnauthorized), "wrong credentials: refused")
	_, err = c.Resolve(ctx, ref, PullOptions{})
	g.Expect(err).To(MatchError(ErrUnauthorized), "Resolve answers the same")
	_, err = c.Ensure(ctx, ref, PullOptions{Policy: sandboxv1alpha1.PullNever}, nil)
	g.Expect(err).To(MatchError(ErrUnauthorized), "Never cannot check new credentials")

	// The right credentials again: accepted from memory, no request.
	reg.reset()
	_, err = c.Ensure(ctx, ref, PullOptions{Auth: right}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(reg.traffic().total).To(BeZero())

	// A public image pulled anonymously is served from the cache to anyone
	// without a request.
	reg.user = ""
	reg.push(t, "public/app:v1", smallImage(t, "two"))
	pub := reg.host + "/public/app:v1"
	_, err = c.Ensure(ctx, pub, PullOptions{}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	reg.reset()
	_, err = c.Ensure(ctx, pub, PullOptions{Auth: Auth{Username: "bob", Password: "x"}}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(reg.traffic().total).To(BeZero())
}
