package access

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// AuthenticationConfigMap is where the kube-apiserver publishes its
// front-proxy (requestheader) configuration for aggregated API servers.
var AuthenticationConfigMap = client.ObjectKey{Namespace: "kube-system", Name: "extension-apiserver-authentication"}

// RequestHeader is the front-proxy authentication of requests proxied by
// the kube-apiserver: its --requestheader-* flags.
type RequestHeader struct {
	// ClientCAs verify the proxy's client certificate.
	ClientCAs *x509.CertPool
	// AllowedNames are the common names the proxy's certificate may have
	// (empty: any name the CAs signed).
	AllowedNames []string
	// UsernameHeaders, GroupHeaders and ExtraHeaderPrefixes name the
	// headers carrying the user.
	UsernameHeaders, GroupHeaders, ExtraHeaderPrefixes []string
}

// ErrUnauthenticated is a request whose identity cannot be trusted.
var ErrUnauthenticated = errors.New("access: unauthenticated")

// LoadRequestHeader reads the front-proxy configuration from
// AuthenticationConfigMap.
func LoadRequestHeader(ctx context.Context, c client.Reader) (RequestHeader, error) {
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, AuthenticationConfigMap, cm); err != nil {
		return RequestHeader{}, fmt.Errorf("reading the front-proxy configuration %s: %w", AuthenticationConfigMap, err)
	}
	ca := cm.Data["requestheader-client-ca-file"]
	if ca == "" {
		return RequestHeader{}, fmt.Errorf("%s has no requestheader-client-ca-file: the kube-apiserver runs without --requestheader-client-ca-file, so it cannot proxy to aggregated APIs", AuthenticationConfigMap)
	}
	rh := RequestHeader{ClientCAs: x509.NewCertPool()}
	if !rh.ClientCAs.AppendCertsFromPEM([]byte(ca)) {
		return RequestHeader{}, fmt.Errorf("%s: requestheader-client-ca-file holds no certificate", AuthenticationConfigMap)
	}
	for key, dst := range map[string]*[]string{
		"requestheader-allowed-names":        &rh.AllowedNames,
		"requestheader-username-headers":     &rh.UsernameHeaders,
		"requestheader-group-headers":        &rh.GroupHeaders,
		"requestheader-extra-headers-prefix": &rh.ExtraHeaderPrefixes,
	} {
		if v := cm.Data[key]; v != "" {
			if err := json.Unmarshal([]byte(v), dst); err != nil {
				return RequestHeader{}, fmt.Errorf("%s: %s: %w", AuthenticationConfigMap, key, err)
			}
		}
	}
	if len(rh.UsernameHeaders) == 0 {
		return RequestHeader{}, fmt.Errorf("%s has no requestheader-username-headers", AuthenticationConfigMap)
	}
	return rh, nil
}

// User is an authenticated caller.
type User struct {
	Name   string
	Groups []string
	Extra  map[string][]string
}

// Authenticate returns the user the proxy vouches for, after checking that
// the request came with a client certificate from the front-proxy CAs and
// an allowed name.
func (rh RequestHeader) Authenticate(r *http.Request) (User, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return User{}, fmt.Errorf("%w: no client certificate", ErrUnauthenticated)
	}
	leaf := r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: rh.ClientCAs, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return User{}, fmt.Errorf("%w: the client certificate is not the front proxy's: %v", ErrUnauthenticated, err)
	}
	if len(rh.AllowedNames) > 0 && !slices.Contains(rh.AllowedNames, leaf.Subject.CommonName) {
		return User{}, fmt.Errorf("%w: client certificate %q is not an allowed front proxy", ErrUnauthenticated, leaf.Subject.CommonName)
	}
	u := User{}
	for _, h := range rh.UsernameHeaders {
		if u.Name = r.Header.Get(h); u.Name != "" {
			break
		}
	}
	if u.Name == "" {
		return User{}, fmt.Errorf("%w: no user in the front-proxy headers", ErrUnauthenticated)
	}
	for _, h := range rh.GroupHeaders {
		u.Groups = append(u.Groups, r.Header.Values(h)...)
	}
	for name, values := range r.Header {
		for _, prefix := range rh.ExtraHeaderPrefixes {
			if len(name) > len(prefix) && strings.EqualFold(name[:len(prefix)], prefix) {
				if u.Extra == nil {
					u.Extra = map[string][]string{}
				}
				key := strings.ToLower(name[len(prefix):])
				u.Extra[key] = append(u.Extra[key], values...)
			}
		}
	}
	return u, nil
}
