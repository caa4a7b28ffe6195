package egressproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

const (
	// drainLimit and drainTimeout bound how much of a refused request's body
	// is read before the connection closes, so that the guest sees the
	// answer rather than a reset.
	drainLimit   = 256 << 10
	drainTimeout = time.Second
)

// session proxies the HTTP/1.1 requests of one guest connection.
type session struct {
	p     *Proxy
	guest net.Conn
	gr    *bufio.Reader
	dst   netip.AddrPort
	// tls says that the guest connection is terminated TLS for sni.
	tls bool
	sni string
	// order lists the secrets' indexes, longest placeholder first.
	order []int
}

// serve forwards the guest's requests to up, one at a time, until either
// side closes.
func (s *session) serve(ctx context.Context, up net.Conn) error {
	stop := context.AfterFunc(ctx, func() { _ = up.Close() })
	defer stop()
	ur := bufio.NewReader(up)

	// While the guest is between requests, an upstream that closes its end
	// closes the guest's too, as a direct connection would.
	var idle chan peeked
	var upClosed atomic.Bool
	watch := func() {
		idle = make(chan peeked, 1)
		go func() {
			_, err := ur.Peek(1)
			if err != nil {
				upClosed.Store(true)
				_ = s.guest.Close()
			}
			idle <- peeked{err}
		}()
	}
	defer func() {
		_ = up.Close()
		if idle != nil {
			<-idle // the watcher's end: up is closed
		}
	}()

	s.order = make([]int, len(s.p.Secrets))
	for i := range s.order {
		s.order[i] = i
	}
	slices.SortStableFunc(s.order, func(a, b int) int {
		return len(s.p.Secrets[b].Placeholder) - len(s.p.Secrets[a].Placeholder)
	})

	watch()
	for {
		req, err := http.ReadRequest(s.gr)
		if err != nil {
			if isEOF(err) || upClosed.Load() {
				return nil
			}
			s.refuse(req, textResponse(http.StatusBadRequest, "The sandbox's egress proxy could not parse this request: "+err.Error()))
			return fmt.Errorf("failed to read a guest request: %w", err)
		}
		if blocked := s.rewrite(req); blocked != nil {
			s.refuse(req, blocked)
			return nil
		}
		if _, ok := req.Header["User-Agent"]; !ok {
			req.Header["User-Agent"] = []string{""} // or Write adds Go's
		}
		if err := req.Write(up); err != nil {
			return fmt.Errorf("failed to forward a request to %s: %w", s.dst, err)
		}
		err = (<-idle).err
		idle = nil
		if err != nil {
			return fmt.Errorf("failed to read a response from %s: %w", s.dst, err)
		}
		resp, err := s.relayResponse(ur, req)
		if err != nil {
			return err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols,
			req.Method == http.MethodConnect && resp.StatusCode/100 == 2:
			// WebSocket and tunnels: bytes from here on, uninspected.
			splice(ctx, s.guest, s.gr, up, ur)
			return nil
		case req.Close || resp.Close:
			return nil
		}
		watch()
	}
}

// peeked is the idle watcher's outcome: nil when the upstream's answer
// begins.
type peeked struct{ err error }

// relayResponse reads responses from ur and writes them to the guest: any
// interim (1xx) ones, then the final one, which it returns.
func (s *session) relayResponse(ur *bufio.Reader, req *http.Request) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(ur, req)
		if err != nil {
			return nil, fmt.Errorf("failed to read a response from %s: %w", s.dst, err)
		}
		err = resp.Write(s.guest)
		_ = resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("failed to relay a response to the guest: %w", err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, nil
		}
	}
}

// finding is where a secret's placeholder was first seen in a request.
type finding struct {
	secret int
	where  string
}

// rewrite substitutes the secrets' placeholders in req, or returns the
// answer to the guest when a placeholder is bound for a host its secret
// does not allow (after reporting the violations).
func (s *session) rewrite(req *http.Request) *http.Response {
	var found []finding
	seen := make([]bool, len(s.p.Secrets))
	note := func(where string) func(i, at int) {
		return func(i, _ int) {
			if !seen[i] {
				seen[i] = true
				found = append(found, finding{secret: i, where: where})
			}
		}
	}
	for _, name := range sortedKeys(req.Header) {
		for _, v := range req.Header[name] {
			s.each(v, note("header "+name))
			if creds, ok := basicCredentials(name, v); ok {
				s.each(creds, note("basic auth"))
			}
		}
	}
	for _, part := range queryParts(req.URL.RawQuery) {
		s.each(part, note("query"))
	}
	if blocked := s.check(req, found); blocked != nil {
		return blocked
	}

	hasBody := req.Body != nil && req.Body != http.NoBody
	if hasBody && strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		// Answered here, and the upstream sees no Expect: req.Write sends
		// the body at once, and a guest waiting for an upstream's 100 would
		// hold it back.
		req.Header.Del("Expect")
		if _, err := io.WriteString(s.guest, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			return textResponse(http.StatusBadRequest, "")
		}
	}
	var body []byte
	if hasBody && s.wantsBody() {
		var err error
		body, err = io.ReadAll(io.LimitReader(req.Body, MaxBody+1))
		if err != nil {
			return textResponse(http.StatusBadRequest, "The sandbox's egress proxy could not read this request's body: "+err.Error())
		}
		if len(body) > MaxBody {
			// Too long to substitute: passed on unchanged.
			req.Body = readCloser{io.MultiReader(bytes.NewReader(body), req.Body), req.Body}
			body = nil
		} else {
			s.each(string(body), note("body"))
			if blocked := s.check(req, found); blocked != nil {
				return blocked
			}
		}
	}
	if len(found) == 0 {
		if body != nil {
			req.Body = io.NopCloser(bytes.NewReader(body))
		}
		return nil
	}

	// Every placeholder found is allowed here: substitute where asked.
	for name, vs := range req.Header {
		for j, v := range vs {
			v = s.replace(v, func(sec *Secret) bool { return sec.Headers })
			if creds, ok := basicCredentials(name, v); ok {
				if c := s.replace(creds, func(sec *Secret) bool { return sec.BasicAuth }); c != creds {
					v = v[:len("Basic ")] + base64.StdEncoding.EncodeToString([]byte(c))
				}
			}
			vs[j] = v
		}
	}
	if req.URL.RawQuery != "" {
		parts := strings.Split(req.URL.RawQuery, "&")
		for j, part := range parts {
			k, v, hasV := strings.Cut(part, "=")
			k, v = s.replaceQuery(k), s.replaceQuery(v)
			if hasV {
				k += "=" + v
			}
			parts[j] = k
		}
		req.URL.RawQuery = strings.Join(parts, "&")
	}
	if body != nil {
		nb := []byte(s.replace(string(body), func(sec *Secret) bool { return sec.Body }))
		req.Body = io.NopCloser(bytes.NewReader(nb))
		if req.ContentLength >= 0 { // else chunked, re-encoded by Write
			req.ContentLength = int64(len(nb))
		}
	}
	return nil
}

// check reports every secret found in req whose host does not allow it and
// returns the 403 for the guest, or nil when all are allowed.
func (s *session) check(req *http.Request, found []finding) *http.Response {
	var names, msgs []string
	for _, f := range found {
		sec := &s.p.Secrets[f.secret]
		host, reason, ok := s.allowed(sec, req)
		if ok {
			continue
		}
		names = append(names, sec.Name)
		msgs = append(msgs, fmt.Sprintf("the placeholder of secret %s (in the %s) may only be sent to its allowed hosts: %s", sec.Name, f.where, reason))
		if s.p.OnViolation != nil {
			s.p.OnViolation(Violation{Time: time.Now(), Secret: sec.Name, Host: host, Dst: s.dst, Where: f.where, Reason: reason})
		}
	}
	if len(names) == 0 {
		return nil
	}
	return textResponse(http.StatusForbidden, fmt.Sprintf("The sandbox's egress proxy blocked this request (secrets %s): %s.",
		strings.Join(names, ", "), strings.Join(msgs, "; ")))
}

// allowed decides whether sec's value may go with req, and names the host
// that decided.
func (s *session) allowed(sec *Secret, req *http.Request) (host, reason string, ok bool) {
	reqHost := normalizeHost(hostOnly(req.Host))
	if s.tls {
		switch {
		case s.sni == "":
			return reqHost, "the guest sent no TLS server name", false
		case !hostMatches(sec.AllowedHosts, s.sni):
			return s.sni, fmt.Sprintf("%s is not among them", s.sni), false
		case reqHost != s.sni:
			return reqHost, fmt.Sprintf("the request's Host %q differs from the TLS server name %s", reqHost, s.sni), false
		}
		return s.sni, "", true
	}
	if !hostMatches(sec.AllowedHosts, reqHost) {
		return reqHost, fmt.Sprintf("%q is not among them", reqHost), false
	}
	var names []string
	if s.p.NamesOf != nil {
		names = s.p.NamesOf(s.dst.Addr())
	}
	if !slices.ContainsFunc(names, func(n string) bool { return normalizeHost(n) == reqHost }) {
		return reqHost, fmt.Sprintf("this plain-HTTP request goes to %s, which the sandbox's resolver did not answer for %s", s.dst.Addr(), reqHost), false
	}
	return reqHost, "", true
}

// wantsBody says whether a secret substitutes in bodies, so that bodies
// must be read.
func (s *session) wantsBody() bool {
	return slices.ContainsFunc(s.p.Secrets, func(sec Secret) bool { return sec.Body })
}

// each calls fn for every placeholder in str with its secret's index and
// position: leftmost first, the longest placeholder at a position (one
// placeholder may begin another, such as $SANDBOX_SECRET_API and
// $SANDBOX_SECRET_API_KEY), without overlaps.
func (s *session) each(str string, fn func(i, at int)) {
	next := make([]int, len(s.order)) // next[k]: the next occurrence of order[k] from pos, -1 none; -2 not looked for
	for k := range next {
		next[k] = -2
	}
	for pos := 0; pos < len(str); {
		best, bestAt := -1, len(str)
		for k, i := range s.order {
			if next[k] == -1 {
				continue
			}
			if next[k] < pos {
				j := strings.Index(str[pos:], s.p.Secrets[i].Placeholder)
				if j < 0 {
					next[k] = -1
					continue
				}
				next[k] = pos + j
			}
			if next[k] < bestAt { // strict: at a tie the longer, earlier in order, wins
				best, bestAt = i, next[k]
			}
		}
		if best < 0 {
			return
		}
		fn(best, bestAt)
		pos = bestAt + len(s.p.Secrets[best].Placeholder)
	}
}

// replace returns str with the placeholders of the secrets that sub selects
// replaced by their values.
func (s *session) replace(str string, sub func(*Secret) bool) string {
	var b strings.Builder
	last := 0
	s.each(str, func(i, at int) {
		sec := &s.p.Secrets[i]
		if !sub(sec) {
			return
		}
		b.WriteString(str[last:at])
		b.Write(sec.Value)
		last = at + len(sec.Placeholder)
	})
	if last == 0 {
		return str
	}
	b.WriteString(str[last:])
	return b.String()
}

// replaceQuery substitutes in one escaped query name or value, which is
// re-escaped only when it changed.
func (s *session) replaceQuery(raw string) string {
	dec, err := url.QueryUnescape(raw)
	if err != nil {
		return raw
	}
	out := s.replace(dec, func(sec *Secret) bool { return sec.QueryParams })
	if out == dec {
		return raw
	}
	return url.QueryEscape(out)
}

// refuse answers the guest with resp and ends the connection. With no req
// yet, it reads one first; it reads some of req's body, so that the guest
// sees the answer rather than a reset.
func (s *session) refuse(req *http.Request, resp *http.Response) {
	_ = s.guest.SetReadDeadline(time.Now().Add(drainTimeout))
	if req == nil {
		req, _ = http.ReadRequest(s.gr)
	}
	resp.Request = req
	_ = s.guest.SetWriteDeadline(time.Now().Add(drainTimeout))
	_ = resp.Write(s.guest)
	if req != nil && req.Body != nil {
		_, _ = io.CopyN(io.Discard, req.Body, drainLimit)
	}
	if cw, ok := s.guest.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// textResponse is the proxy's own answer: msg as plain text, then close.
func textResponse(status int, msg string) *http.Response {
	if msg == "" {
		msg = http.StatusText(status)
	}
	msg += "\n"
	return &http.Response{
		StatusCode:    status,
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "X-Sandbox-Egress-Proxy": {"blocked"}},
		Body:          io.NopCloser(strings.NewReader(msg)),
		ContentLength: int64(len(msg)),
		Close:         true,
	}
}

// badGateway is the answer when the destination cannot be reached.
func badGateway(msg string) *http.Response {
	return textResponse(http.StatusBadGateway, msg)
}

// basicCredentials returns the decoded "user:password" of a Basic
// Authorization or Proxy-Authorization header value.
func basicCredentials(name, v string) (string, bool) {
	if name != "Authorization" && name != "Proxy-Authorization" {
		return "", false
	}
	if len(v) < len("Basic ") || !strings.EqualFold(v[:len("Basic ")], "Basic ") {
		return "", false
	}
	dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v[len("Basic "):]))
	if err != nil {
		return "", false
	}
	return string(dec), true
}

// queryParts returns the unescaped names and values of a raw query.
func queryParts(raw string) []string {
	if raw == "" {
		return nil
	}
	var out []string
	for part := range strings.SplitSeq(raw, "&") {
		k, v, _ := strings.Cut(part, "=")
		for _, x := range []string{k, v} {
			if dec, err := url.QueryUnescape(x); err == nil {
				out = append(out, dec)
			} else {
				out = append(out, x)
			}
		}
	}
	return out
}

// hostOnly strips a port from a Host value.
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
}

// sortedKeys returns h's names in order, so that a violation names the
// same header each time.
func sortedKeys(h http.Header) []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// isEOF reports whether err is the guest closing between requests.
func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}

// readCloser joins a reader and a closer.
type readCloser struct {
	io.Reader
	io.Closer
}
