package access

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/util/proxy"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// Headers the manager sets on requests to a node agent (informational:
// the agent trusts the manager's client certificate, not these).
const (
	HeaderSandbox = "X-Sandbox-Name" // namespace/name
	HeaderUser    = "X-Sandbox-User"
)

// AgentPath is the path of a sandbox subresource on a node agent's access
// server: by UID, so that a Sandbox deleted and re-created under the same
// name is never reached by a request meant for the old one.
func AgentPath(uid, subresource string) string {
	return "/v1/sandboxes/" + uid + "/" + subresource
}

// AgentProxy is the Backend that streams an authorized request to the
// node agent of the sandbox's node over mutual TLS: the manager presents
// ClientCert, and accepts only the certificate the agent published in its
// SandboxNode's status.access (pinned, byte for byte). httputil's reverse
// proxy passes connection upgrades (websocket, SPDY) through.
type AgentProxy struct {
	Client client.Reader
	// ClientCert is the manager's client certificate, renewed before it
	// expires (the agents check its validity against the client CA).
	ClientCert *RotatingCert
}

// needsRunning lists the subresources that reach the guest (logs are on the
// node and readable after the VM stopped).
var needsRunning = map[string]bool{"exec": true, "attach": true, "files": true, "metrics": true}

// ErrAttachInput is the answer to an attach that asks for stdin or a tty:
// a sandbox's main process is started on neither, so attach streams its
// output only (as `kubectl attach` to a container without stdin does).
var ErrAttachInput = errors.New("the sandbox's main process has no stdin and no terminal: attach streams its output only " +
	"(leave out -i and -t; for an interactive shell use exec -it)")

// Serve implements Backend.
func (p *AgentProxy) Serve(w http.ResponseWriter, r *http.Request, t Target) {
	ctx := r.Context()
	sbx := &sandboxv1alpha1.Sandbox{}
	if err := p.Client.Get(ctx, client.ObjectKey{Namespace: t.Namespace, Name: t.Name}, sbx); err != nil {
		if apierrors.IsNotFound(err) {
			writeStatus(w, apierrors.NewNotFound(schema.GroupResource{Group: sandboxv1alpha1.GroupVersion.Group, Resource: "sandboxes"}, t.Name))
			return
		}
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	if sbx.Status.NodeName == "" {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("sandbox %s is not placed on a node (phase %s)", t.Name, phaseOf(sbx))))
		return
	}
	if needsRunning[t.Subresource] && sbx.Status.Phase != sandboxv1alpha1.PhaseRunning {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("sandbox %s is %s, not Running", t.Name, phaseOf(sbx))))
		return
	}
	target, transport, err := p.agent(ctx, sbx.Status.NodeName)
	if err != nil {
		var st *apierrors.StatusError
		if errors.As(err, &st) {
			writeStatus(w, st)
		} else {
			writeStatus(w, apierrors.NewInternalError(err))
		}
		return
	}
	query := r.URL.RawQuery
	if t.Subresource == "exec" || t.Subresource == "attach" {
		opts := streamOptions(r.URL.Query())
		if t.Subresource == "attach" && (opts.Stdin || opts.Tty) {
			writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("sandbox %s: %v", t.Name, ErrAttachInput)))
			return
		}
		query = agentStreamQuery(r.URL.Query(), opts).Encode()
		if isWebSocket(r) {
			// client-go's websocket executor speaks v5.channel.k8s.io; the
			// agent, like the kubelet, speaks SPDY: translate here, as the
			// kube-apiserver does for the kubelet.
			loc := *target
			loc.Path, loc.RawQuery = AgentPath(string(sbx.UID), t.Subresource), query
			proxy.NewStreamTranslatorHandler(&loc, transport, 0, opts).ServeHTTP(w, r)
			return
		}
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.URL.Path = AgentPath(string(sbx.UID), t.Subresource)
			pr.Out.URL.RawPath = ""
			pr.Out.URL.RawQuery = query
			for name := range pr.Out.Header {
				if l := strings.ToLower(name); l == "authorization" || strings.HasPrefix(l, "x-remote-") || strings.HasPrefix(l, "impersonate-") {
					pr.Out.Header.Del(name)
				}
			}
			pr.Out.Header.Set(HeaderSandbox, t.Namespace+"/"+t.Name)
			pr.Out.Header.Set(HeaderUser, t.User.Name)
		},
		Transport: transport,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			writeStatus(w, &apierrors.StatusError{ErrStatus: apierrors.NewServiceUnavailable(
				fmt.Sprintf("reaching the node agent on %s: %v", sbx.Status.NodeName, err)).ErrStatus})
		},
	}
	rp.ServeHTTP(w, r)
}

// agent returns the URL of the access server of node's agent and a
// transport that pins its certificate.
func (p *AgentProxy) agent(ctx context.Context, node string) (*url.URL, http.RoundTripper, error) {
	sn := &sandboxv1alpha1.SandboxNode{}
	if err := p.Client.Get(ctx, client.ObjectKey{Name: node}, sn); err != nil {
		return nil, nil, fmt.Errorf("reading SandboxNode %s: %w", node, err)
	}
	acc := sn.Status.Access
	if acc == nil || acc.Endpoint == "" {
		return nil, nil, apierrors.NewServiceUnavailable(fmt.Sprintf("the node agent on %s does not serve the access API", node))
	}
	block, _ := pem.Decode([]byte(acc.Certificate))
	if block == nil {
		return nil, nil, apierrors.NewServiceUnavailable(fmt.Sprintf("SandboxNode %s publishes no valid access certificate", node))
	}
	pinned := block.Bytes
	cfg := &tls.Config{
		GetClientCertificate: p.ClientCert.GetClientCertificate,
		MinVersion:           tls.VersionTLS12,
		// The agent's certificate is self-signed and pinned: verified by
		// its bytes below instead of a CA and a host name (so its expiry
		// does not matter: a restarted agent publishes a new one).
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyPeerCertificate against the pinned certificate
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], pinned) {
				return fmt.Errorf("the node agent on %s presented a certificate other than the one in its SandboxNode status", node)
			}
			return nil
		},
	}
	return &url.URL{Scheme: "https", Host: acc.Endpoint}, &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: false}, nil
}

// streamOptions reads the streams a public exec or attach request asks
// for, with PodExecOptions' parameter names (stdin, stdout, stderr, tty:
// "true" or "1").
func streamOptions(q url.Values) proxy.Options {
	on := func(k string) bool { v := q.Get(k); return v == "true" || v == "1" }
	o := proxy.Options{Stdin: on("stdin"), Stdout: on("stdout"), Stderr: on("stderr"), Tty: on("tty")}
	if o.Tty {
		o.Stderr = false // a tty merges stderr into stdout
	}
	return o
}

// agentStreamQuery is the node agent's (the kubelet's) form of a stream
// request: the command and input/output/error/tty as "1".
func agentStreamQuery(in url.Values, o proxy.Options) url.Values {
	q := url.Values{}
	for _, c := range in["command"] {
		q.Add("command", c)
	}
	for k, on := range map[string]bool{"input": o.Stdin, "output": o.Stdout, "error": o.Stderr, "tty": o.Tty} {
		if on {
			q.Set(k, "1")
		}
	}
	return q
}

func isWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket") &&
		strings.Contains(strings.ToLower(r.Header.Get("Connection")), "upgrade")
}

func phaseOf(sbx *sandboxv1alpha1.Sandbox) string {
	if sbx.Status.Phase == "" {
		return string(sandboxv1alpha1.PhaseCreated)
	}
	return string(sbx.Status.Phase)
}
