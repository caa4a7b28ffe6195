package nodeagent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/access"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

const (
	// accessCertValidity is the lifetime of the agent's self-signed access
	// certificate (a new one is made at every start and published).
	accessCertValidity = 365 * 24 * time.Hour
	// clientCARefresh is how often the manager's client CA is read again.
	clientCARefresh = 30 * time.Second
	// initialSizeWait bounds the wait for a tty client's first window size.
	initialSizeWait = 500 * time.Millisecond
	// execIdleTimeout closes an exec stream without traffic for this long.
	execIdleTimeout = 4 * time.Hour
)

// accessServer is the node's end of the access API: the manager's
// AgentProxy reaches it over mutual TLS (its client certificate from the
// access client CA; this server's self-signed certificate is published in
// SandboxNode status.access and pinned by the manager), by sandbox UID.
// Exec and attach speak the kubelet's streaming protocols (SPDY and
// websocket up to v4.channel.k8s.io) with k8s.io/cri-streaming's server;
// the manager translates websocket v5 clients, as the kube-apiserver does
// for the kubelet.
type accessServer struct {
	r         *SandboxReconciler
	reader    client.Reader
	namespace string // of the client CA ConfigMap
	cert      tls.Certificate
	info      sandboxv1alpha1.NodeAccess
	clientCAs atomic.Pointer[x509.CertPool]
	listener  net.Listener
}

// newAccessServer makes the agent's certificate for advertise and listens
// on bind.
func newAccessServer(r *SandboxReconciler, reader client.Reader, namespace, bind, advertise string) (*accessServer, error) {
	host, port, err := splitAdvertise(advertise)
	if err != nil {
		return nil, err
	}
	advertise = net.JoinHostPort(host, port)
	self, err := access.NewCA("sandbox-node-agent "+r.args.NodeName, accessCertValidity)
	if err != nil {
		return nil, err
	}
	pair, err := self.IssueServer("sandbox-node-agent", []string{host}, accessCertValidity)
	if err != nil {
		return nil, err
	}
	cert, err := pair.TLSCertificate()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("listening for the access API on %s: %w", bind, err)
	}
	if strings.HasSuffix(advertise, ":0") {
		// The port was picked at random: advertise the one bound.
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		advertise = net.JoinHostPort(host, port)
	}
	return &accessServer{r: r, reader: reader, namespace: namespace, cert: cert, listener: ln,
		info: sandboxv1alpha1.NodeAccess{Endpoint: advertise, Certificate: string(pair.CertPEM)}}, nil
}

// splitAdvertise splits the advertised host:port. It also takes an IPv6
// address without brackets ("fd00::5:10270"): the chart builds the address
// as $(HOST_IP):<port> from the downward API, which gives no brackets on an
// IPv6 node; the last colon is the port's there.
func splitAdvertise(advertise string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(advertise)
	if err == nil {
		return host, port, nil
	}
	if i := strings.LastIndexByte(advertise, ':'); i > 0 && !strings.Contains(advertise, "[") {
		if ip := net.ParseIP(advertise[:i]); ip != nil && ip.To4() == nil {
			if _, perr := strconv.ParseUint(advertise[i+1:], 10, 16); perr == nil {
				return advertise[:i], advertise[i+1:], nil
			}
		}
	}
	return "", "", fmt.Errorf("access advertise address %q: %w", advertise, err)
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (s *accessServer) NeedLeaderElection() bool { return false }

// Start serves until ctx ends.
func (s *accessServer) Start(ctx context.Context) error {
	log := ctrl.LoggerFrom(ctx).WithName("access")
	go func() {
		for {
			if err := s.loadClientCA(ctx); err != nil && ctx.Err() == nil {
				log.Info("Waiting for the access client CA", "error", err.Error())
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(clientCARefresh):
			}
		}
	}()
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 30 * time.Second,
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{s.cert},
			// Per connection: the client CA may appear or change.
			GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				pool := s.clientCAs.Load()
				if pool == nil {
					return nil, errors.New("no access client CA yet")
				}
				return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{s.cert},
					ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}, nil
			},
		},
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	log.Info("Serving the access API", "endpoint", s.info.Endpoint)
	if err := srv.ServeTLS(s.listener, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (s *accessServer) loadClientCA(ctx context.Context) error {
	cm := &corev1.ConfigMap{}
	if err := s.reader.Get(ctx, client.ObjectKey{Namespace: s.namespace, Name: access.ClientCAName}, cm); err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cm.Data[access.ClientCACertKey])) {
		return fmt.Errorf("ConfigMap %s/%s holds no CA certificate", s.namespace, access.ClientCAName)
	}
	s.clientCAs.Store(pool)
	return nil
}

// ServeHTTP routes /v1/sandboxes/<uid>/<subresource>.
func (s *accessServer) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	rest, ok := strings.CutPrefix(req.URL.Path, "/v1/sandboxes/")
	uid, sub, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || !validUID(uid) {
		http.NotFound(w, req)
		return
	}
	if sub == "log" {
		// Logs outlive the VM: read them from the sandbox's directory.
		dir := s.r.runDir(types.UID(uid))
		if _, err := os.Stat(dir); err != nil {
			writeStatus(w, apierrors.NewNotFound(protocolResource, uid))
			return
		}
		serveLog(w, req, dir)
		return
	}
	h := s.r.handleOf(types.UID(uid))
	if h == nil {
		http.Error(w, "no VM of this sandbox runs on this node", http.StatusNotFound)
		return
	}
	switch sub {
	case "exec":
		opts, err := remotecommandserver.NewOptions(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		cmd := req.URL.Query()["command"]
		if len(cmd) == 0 {
			http.Error(w, "no command", http.StatusBadRequest)
			return
		}
		remotecommandserver.ServeExec(w, req, guestExecutor{h: h}, h.key.Name, uid, "", cmd, opts,
			execIdleTimeout, remotecommandserver.DefaultStreamCreationTimeout, remotecommandserver.SupportedStreamingProtocols)
	case "attach":
		serveAttach(w, req, h, uid)
	case "files":
		gc := h.Guest()
		if gc == nil {
			writeStatus(w, apierrors.NewServiceUnavailable("the sandbox's guest agent is not connected"))
			return
		}
		serveFiles(w, req, gc, h.key.String())
	case "metrics":
		h.mu.Lock()
		m := h.metrics
		h.mu.Unlock()
		if m == nil {
			http.Error(w, "the guest has not reported metrics yet", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(m)
	default:
		http.Error(w, "unknown subresource "+sub, http.StatusNotFound)
	}
}

// validUID accepts what the API server makes UIDs of (a UUID): it names a
// directory, so nothing like ".." may pass.
func validUID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') && r != '-' {
			return false
		}
	}
	return true
}

// handleOf returns the VM handle of the sandbox with uid, if one runs.
func (r *SandboxReconciler) handleOf(uid types.UID) *vmHandle {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st := r.sandboxes[uid]; st != nil {
		return st.handle
	}
	return nil
}

// guestExecutor runs kubelet-style exec requests as guest exec sessions.
type guestExecutor struct{ h *vmHandle }

// ExecInContainer implements remotecommandserver.Executor.
func (e guestExecutor) ExecInContainer(ctx context.Context, _, _, _ string, cmd []string, in io.Reader, out, errw io.WriteCloser,
	tty bool, resize <-chan remotecommandserver.TerminalSize, timeout time.Duration) error {
	gc := e.h.Guest()
	if gc == nil {
		return errors.New("the sandbox's guest agent is not connected")
	}
	req := protocol.Exec{Argv: cmd, Tty: tty, Stdin: in != nil, TimeoutMillis: timeout.Milliseconds()}
	if tty && resize != nil {
		// Clients send the terminal's size first thing: open the pty at that
		// size, or a quick command would see the default 24x80.
		select {
		case size, ok := <-resize:
			if ok {
				req.Rows, req.Cols = size.Height, size.Width
			}
		case <-time.After(initialSizeWait):
		case <-ctx.Done():
		}
	}
	p, err := gc.Exec(ctx, req)
	if err != nil {
		return err
	}
	defer func() { _ = p.Close() }()
	// A client that goes away must not leave the session's output unread:
	// that would stall every session of the VM's connection.
	defer context.AfterFunc(ctx, func() { _ = p.Close() })()
	var wg sync.WaitGroup
	if in != nil {
		go func() {
			_, _ = io.Copy(p.Stdin, in)
			_ = p.Stdin.Close()
		}()
	}
	if resize != nil {
		go func() {
			for {
				select {
				case size, ok := <-resize:
					if !ok {
						return
					}
					_ = p.Resize(size.Height, size.Width)
				case <-p.Exited():
					return
				}
			}
		}()
	}
	copyOut := func(dst io.Writer, src io.Reader) {
		defer wg.Done()
		if dst == nil {
			dst = io.Discard
		}
		if _, err := io.Copy(dst, src); err != nil {
			_ = p.Close() // the client is gone: discard the rest
		}
	}
	wg.Add(2)
	go copyOut(out, p.Stdout)
	go copyOut(errw, p.Stderr)
	ex, err := p.Wait()
	wg.Wait()
	if err != nil {
		return err
	}
	if ex.Signal != "" {
		return utilexec.CodeExitError{Err: fmt.Errorf("command killed by %s", ex.Signal), Code: int(mainExitCode(ex))}
	}
	if ex.Code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", ex.Code), Code: ex.Code}
	}
	return nil
}
