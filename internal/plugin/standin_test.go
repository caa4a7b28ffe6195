package plugin

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/pkg/client/clientset/versioned"
)

// standInAPI stands in for the access API (the manager behind the API
// server's aggregation, the node agent and the guest) in these unit
// tests: it serves the public paths with the agent's query parameters,
// and its files subresource works on a local directory as the sandbox's
// root, with the guest's tar naming. It checks only what the plugin
// sends; the real path is covered by the e2e tests.
type standInAPI struct {
	t    *testing.T
	srv  *httptest.Server
	root string // the sandbox's "/"

	mu       sync.Mutex
	requests []recorded
	// handle, when set, answers a subresource instead of the default.
	handle map[string]http.HandlerFunc
}

type recorded struct {
	Method, Path string
	Query        url.Values
}

const standInPrefix = "/apis/subresources.sandbox.microvm.dev/v1alpha1/namespaces/"

func newStandInAPI(t *testing.T) *standInAPI {
	s := &standInAPI{t: t, root: t.TempDir(), handle: map[string]http.HandlerFunc{}}
	// TLS: client-go sends the kubeconfig's credentials only over https.
	s.srv = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *standInAPI) last() recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.requests) == 0 {
		s.t.Fatal("the stand-in API got no request")
	}
	return s.requests[len(s.requests)-1]
}

func (s *standInAPI) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests = append(s.requests, recorded{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query()})
	s.mu.Unlock()
	rest, ok := strings.CutPrefix(r.URL.Path, standInPrefix)
	parts := strings.Split(rest, "/")
	if !ok || len(parts) != 4 || parts[1] != "sandboxes" {
		standInStatus(w, apierrors.NewNotFound(schema.GroupResource{Resource: "path"}, r.URL.Path))
		return
	}
	if h := s.handle[parts[3]]; h != nil {
		h(w, r)
		return
	}
	if parts[2] != "dev" {
		standInStatus(w, apierrors.NewNotFound(schema.GroupResource{Group: "sandbox.microvm.dev", Resource: "sandboxes"}, parts[2]))
		return
	}
	switch parts[3] {
	case "files":
		s.files(w, r)
	default:
		standInStatus(w, apierrors.NewBadRequest("the stand-in does not serve "+parts[3]))
	}
}

func standInStatus(w http.ResponseWriter, err *apierrors.StatusError) {
	st := err.Status()
	st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(int(st.Code))
	_ = json.NewEncoder(w).Encode(&st)
}

// guestError is a Status as the agent makes it from a guest error kind.
func guestError(code int32, kind protocol.ErrorKind, msg string) *apierrors.StatusError {
	return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: code, Reason: metav1.StatusReason(kind), Message: msg}}
}

func (s *standInAPI) local(p string) string {
	return filepath.Join(s.root, filepath.FromSlash(path.Clean("/"+p)))
}

func info(name string, fi fs.FileInfo, link string) protocol.FileInfo {
	k := protocol.KindOther
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		k = protocol.KindSymlink
	case fi.IsDir():
		k = protocol.KindDir
	case fi.Mode().IsRegular():
		k = protocol.KindFile
	}
	return protocol.FileInfo{Name: name, Kind: k, Size: fi.Size(), Mode: uint32(fi.Mode().Perm()), ModTimeNanos: fi.ModTime().UnixNano(), Link: link}
}

// files serves the files subresource on s.root, as internal/nodeagent's
// serveFiles and the guest do (GET reads, POST changes).
func (s *standInAPI) files(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	op, p := protocol.FileOp(q.Get("op")), q.Get("path")
	lp := s.local(p)
	isRead := map[protocol.FileOp]bool{protocol.FileRead: true, protocol.FileTar: true, protocol.FileList: true, protocol.FileStat: true, protocol.FileExists: true}[op]
	if isRead != (r.Method == http.MethodGet) {
		standInStatus(w, apierrors.NewMethodNotSupported(schema.GroupResource{Resource: "sandboxes/files"}, r.Method))
		return
	}
	fail := func(err error) {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			standInStatus(w, guestError(http.StatusNotFound, protocol.ErrNotFound, p+": no such file or directory"))
		case errors.Is(err, fs.ErrExist):
			standInStatus(w, guestError(http.StatusConflict, protocol.ErrExists, p+": file exists"))
		default:
			standInStatus(w, apierrors.NewInternalError(err))
		}
	}
	answer := func(res protocol.FileResult) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(res)
	}
	switch op {
	case protocol.FileStat:
		fi, err := os.Lstat(lp)
		if err != nil {
			fail(err)
			return
		}
		link, _ := os.Readlink(lp)
		st := info(p, fi, link)
		answer(protocol.FileResult{Stat: &st})
	case protocol.FileList:
		des, err := os.ReadDir(lp)
		if err != nil {
			fail(err)
			return
		}
		var res protocol.FileResult
		for _, d := range des {
			fi, _ := d.Info()
			link, _ := os.Readlink(filepath.Join(lp, d.Name()))
			res.Entries = append(res.Entries, info(d.Name(), fi, link))
		}
		answer(res)
	case protocol.FileRead:
		f, err := os.Open(lp)
		if err != nil {
			fail(err)
			return
		}
		defer func() { _ = f.Close() }()
		_, _ = io.Copy(w, f)
	case protocol.FileWrite:
		data, _ := io.ReadAll(r.Body)
		if err := os.WriteFile(lp, data, 0o644); err != nil {
			fail(err)
			return
		}
		answer(protocol.FileResult{Bytes: int64(len(data))})
	case protocol.FileMkdir:
		var err error
		if q.Get("recursive") == "true" {
			err = os.MkdirAll(lp, 0o755)
		} else {
			err = os.Mkdir(lp, 0o755)
		}
		if err != nil {
			fail(err)
			return
		}
		answer(protocol.FileResult{})
	case protocol.FileRemove:
		if _, err := os.Lstat(lp); err != nil {
			fail(err)
			return
		}
		var err error
		if q.Get("recursive") == "true" {
			err = os.RemoveAll(lp)
		} else {
			err = os.Remove(lp)
		}
		if err != nil {
			fail(err)
			return
		}
		answer(protocol.FileResult{})
	case protocol.FileRename:
		if err := os.Rename(lp, s.local(q.Get("dest"))); err != nil {
			fail(err)
			return
		}
		answer(protocol.FileResult{})
	case protocol.FileTar:
		// Entries relative to path's parent, as the guest's tar.
		if _, err := os.Lstat(lp); err != nil {
			fail(err)
			return
		}
		if err := writeTar(w, lp, path.Base(p)); err != nil {
			panic(http.ErrAbortHandler)
		}
	case protocol.FileUntar:
		if err := s.untar(r.Body, lp); err != nil {
			standInStatus(w, guestError(http.StatusBadRequest, protocol.ErrInvalid, err.Error()))
			return
		}
		answer(protocol.FileResult{})
	default:
		standInStatus(w, apierrors.NewBadRequest("unknown op "+string(op)))
	}
}

// untar extracts into dir, refusing entries outside it as the guest does.
func (s *standInAPI) untar(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if !filepath.IsLocal(filepath.FromSlash(hdr.Name)) {
			return errors.New("entry outside the directory: " + hdr.Name)
		}
		p := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, fs.FileMode(hdr.Mode).Perm()|0o700)
		case tar.TypeReg:
			var buf bytes.Buffer
			if _, err = io.Copy(&buf, tr); err == nil {
				err = os.WriteFile(p, buf.Bytes(), fs.FileMode(hdr.Mode).Perm())
			}
		case tar.TypeSymlink:
			err = os.Symlink(hdr.Linkname, p)
		}
		if err != nil {
			return err
		}
	}
}

// plugin runs the plugin against the stand-in with a kubeconfig whose
// context's namespace is "team", as a user would with kubectl's flags.
type pluginRun struct {
	opts           *Options
	stdout, stderr *bytes.Buffer
	kubeconfig     string
}

func newPluginRun(t *testing.T, server string, stdin string) *pluginRun {
	t.Helper()
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "` + server + `", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: secret-token}
contexts:
- name: ctx
  context: {cluster: c, user: u, namespace: team}
current-context: ctx
`
	if err := os.WriteFile(kc, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	streams, in, out, errOut := genericiooptions.NewTestIOStreams()
	in.WriteString(stdin)
	o := &Options{IOStreams: streams}
	o.NewClientset = func(c *rest.Config) (versioned.Interface, error) { return versioned.NewForConfig(c) }
	return &pluginRun{opts: o, stdout: out, stderr: errOut, kubeconfig: kc}
}

// run executes one command line (without "kubectl sandbox").
func (p *pluginRun) run(args ...string) error {
	p.stdout.Reset()
	p.stderr.Reset()
	p.opts.ConfigFlags = newConfigFlags()
	root := p.opts.newRootCommand()
	root.SetArgs(append([]string{"--kubeconfig", p.kubeconfig}, args...))
	return root.Execute()
}

func sandboxesResource(r string) schema.GroupResource {
	return schema.GroupResource{Group: "subresources.sandbox.microvm.dev", Resource: r}
}
