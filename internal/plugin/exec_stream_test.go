package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apiserver/pkg/util/proxy"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/utils/exec"
)

// standInExecutor is the guest's part in the streaming tests: "cat"
// echoes stdin, "exit N" ends with code N, anything else prints its argv.
type standInExecutor struct{}

func (standInExecutor) ExecInContainer(_ context.Context, _, _, _ string, cmd []string, in io.Reader, out, errw io.WriteCloser,
	_ bool, _ <-chan remotecommandserver.TerminalSize, _ time.Duration) error {
	switch {
	case cmd[0] == "cat" && in != nil:
		_, err := io.Copy(out, in)
		return err
	case cmd[0] == "exit":
		var code int
		_, _ = fmt.Sscan(cmd[1], &code)
		_, _ = fmt.Fprintln(errw, "exiting")
		return exec.CodeExitError{Err: fmt.Errorf("exit %d", code), Code: code}
	}
	_, err := fmt.Fprintln(out, strings.Join(cmd, " "))
	return err
}

// serveStandInExec stands in for the manager's exec path: the kubelet-style
// agent (k8s.io/cri-streaming: SPDY, websocket up to v4) behind the same
// translation internal/access does (websocket v5 clients through the
// apiserver's stream translator, SPDY proxied as is). refuseWebSocket
// plays a proxy on the way that cannot upgrade to websockets.
func serveStandInExec(t *testing.T, api *standInAPI, refuseWebSocket bool) {
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		opts, err := remotecommandserver.NewOptions(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		remotecommandserver.ServeExec(w, r, standInExecutor{}, "dev", "uid", "", r.URL.Query()["command"], opts,
			time.Minute, 10*time.Second, remotecommandserver.SupportedStreamingProtocols)
	}))
	t.Cleanup(agent.Close)
	agentURL, _ := url.Parse(agent.URL)
	api.handle["exec"] = func(w http.ResponseWriter, r *http.Request) {
		in := r.URL.Query()
		on := func(k string) bool { return in.Get(k) == "true" }
		opts := proxy.Options{Stdin: on("stdin"), Stdout: on("stdout"), Stderr: on("stderr"), Tty: on("tty")}
		q := url.Values{"command": in["command"]}
		for k, v := range map[string]bool{"input": opts.Stdin, "output": opts.Stdout, "error": opts.Stderr, "tty": opts.Tty} {
			if v {
				q.Set(k, "1")
			}
		}
		loc := *agentURL
		loc.Path, loc.RawQuery = "/exec", q.Encode()
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			if refuseWebSocket {
				http.Error(w, "websockets are not allowed here", http.StatusBadRequest)
				return
			}
			proxy.NewStreamTranslatorHandler(&loc, http.DefaultTransport, 0, opts).ServeHTTP(w, r)
			return
		}
		rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&loc)
			pr.Out.URL.Path, pr.Out.URL.RawQuery = loc.Path, loc.RawQuery
		}}
		rp.ServeHTTP(w, r)
	}
}

// TestExecStreams runs exec with the real executors against a stand-in
// of the streaming path: stdin, stdout, stderr and the exit code, over
// websocket v5 and over SPDY after the fallback. A terminal (-t) needs a
// real one and is left to the e2e tests.
func TestExecStreams(t *testing.T) {
	for _, c := range []struct {
		name            string
		refuseWebSocket bool
	}{
		{name: "websocket v5"},
		{name: "SPDY when websockets cannot pass", refuseWebSocket: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			api := newStandInAPI(t)
			serveStandInExec(t, api, c.refuseWebSocket)
			p := newPluginRun(t, api.srv.URL, "hello from stdin")

			g.Expect(p.run("exec", "-i", "dev", "--", "cat")).To(Succeed())
			g.Expect(p.stdout.String()).To(Equal("hello from stdin"))

			g.Expect(p.run("exec", "dev", "--", "echo", "a b")).To(Succeed())
			g.Expect(p.stdout.String()).To(Equal("echo a b\n"))

			err := p.run("exec", "dev", "--", "exit", "3")
			var exitErr exec.ExitError
			g.Expect(errors.As(err, &exitErr)).To(BeTrue(), "%v", err)
			g.Expect(exitErr.ExitStatus()).To(Equal(3))
			g.Expect(p.stderr.String()).To(Equal("exiting\n"))

			methods := map[string]bool{}
			api.mu.Lock()
			defer api.mu.Unlock()
			for _, r := range api.requests {
				methods[r.Method] = true
			}
			g.Expect(methods[http.MethodPost]).To(Equal(c.refuseWebSocket), "SPDY (POST) only after the fallback")
		})
	}
}
