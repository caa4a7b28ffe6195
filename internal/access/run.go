package access

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The manager's permissions for the access API. ConfigMaps and Secrets
// only in the manager's own namespace (the access client CA: a Secret with
// its key, a ConfigMap with its certificate for the agents) and the
// front-proxy configuration the kube-apiserver publishes in kube-system;
// the manager reads them with a direct client, so no cluster-wide list or
// watch is needed. The namespace is the default install's: a kustomize
// namespace transformer or the Helm chart renders the real one.
// +kubebuilder:rbac:groups="",namespace=sandbox-system,resources=configmaps,verbs=get;create;update
// +kubebuilder:rbac:groups="",namespace=sandbox-system,resources=secrets,verbs=get;create
// +kubebuilder:rbac:groups="",namespace=kube-system,resources=configmaps,verbs=get,resourceNames=extension-apiserver-authentication
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create
// +kubebuilder:rbac:groups=apiregistration.k8s.io,resources=apiservices,verbs=get;create;patch

// Options configure the manager's access API server.
type Options struct {
	// BindAddress is where the access API is served (TLS).
	BindAddress string
	// Namespace holds the access client CA and the Service in front of the
	// manager.
	Namespace string
	// ServiceName is that Service (the APIService points at it; the
	// serving certificate names <ServiceName>.<Namespace>.svc).
	ServiceName string
	// ServicePort is the Service's port (default: BindAddress's port).
	ServicePort int
	// RegisterAPIService creates or updates the APIService
	// v1alpha1.subresources.sandbox.microvm.dev with this process's serving
	// CA, so that the kube-apiserver proxies to it.
	RegisterAPIService bool
	// CertDir, when set, holds the serving certificate in the layout of a
	// kubernetes.io/tls Secret as cert-manager writes it (tls.crt, tls.key
	// and, for the APIService's caBundle, ca.crt), mounted from that
	// Secret. The files are watched: a renewed certificate is served
	// without a restart. Unset, the manager issues its own serving
	// certificate from the CA it keeps in the Secret ServingCAName.
	CertDir string
}

// The file names in CertDir: a kubernetes.io/tls Secret's keys, and
// cert-manager's ca.crt.
const (
	CertDirCertFile = "tls.crt"
	CertDirKeyFile  = "tls.key"
	CertDirCAFile   = "ca.crt"
)

// certWatchInterval is how often the mounted serving certificate is re-read
// besides file notifications (a Secret volume's update swaps a symlink,
// which some file systems do not report).
const certWatchInterval = 10 * time.Second

// servingValidity is the lifetime of each serving certificate the manager
// issues from the serving CA (renewed after two thirds: RotatingCert).
const servingValidity = 365 * 24 * time.Hour

// requestHeaderWait bounds the wait for the front-proxy configuration.
const requestHeaderWait = 2 * time.Minute

// Runnable serves the access API in the manager.
type Runnable struct {
	// Client writes (CA Secret and ConfigMap, APIService, SARs); Reader
	// reads Sandboxes and SandboxNodes (the manager's cache).
	Client client.Client
	Reader client.Reader
	Opts   Options
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every
// manager replica serves the access API (its CAs are shared in Secrets).
func (r *Runnable) NeedLeaderElection() bool { return false }

// Start implements manager.Runnable.
func (r *Runnable) Start(ctx context.Context) error {
	log := ctrl.LoggerFrom(ctx).WithName("access")
	var rh RequestHeader
	deadline := time.Now().Add(requestHeaderWait)
	for {
		var err error
		if rh, err = LoadRequestHeader(ctx, r.Client); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
	ca, err := EnsureClientCA(ctx, r.Client, r.Opts.Namespace)
	if err != nil {
		return err
	}
	clientCert, err := NewRotatingCert(ca.ManagerClientCert)
	if err != nil {
		return err
	}
	serving, err := r.servingCertificate(ctx)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", r.Opts.BindAddress)
	if err != nil {
		return fmt.Errorf("listening for the access API on %s: %w", r.Opts.BindAddress, err)
	}
	port := r.Opts.ServicePort
	if port == 0 {
		port = ln.Addr().(*net.TCPAddr).Port
	}
	if r.Opts.RegisterAPIService {
		if err := r.registerAPIService(ctx, port, serving.caPEM); err != nil {
			_ = ln.Close()
			return err
		}
	}
	srv := &http.Server{
		Handler: &Server{Authn: rh, Authz: SubjectAccessReviews{Client: r.Client},
			Backend: &AgentProxy{Client: r.Reader, ClientCert: clientCert}},
		ReadHeaderTimeout: 30 * time.Second,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: serving.get,
			ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: rh.ClientCAs},
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	log.Info("Serving the access API", "address", ln.Addr().String(), "service", r.serviceHost(), "certificate", serving.source)
	if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// servingCert is where the access API's serving certificate comes from.
type servingCert struct {
	// get returns the certificate to present (tls.Config.GetCertificate).
	get func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// caPEM verifies it: the APIService's caBundle.
	caPEM []byte
	// source says which it is, for the log.
	source string
}

// serviceHost is the Service's DNS name the aggregator verifies.
func (r *Runnable) serviceHost() string {
	return r.Opts.ServiceName + "." + r.Opts.Namespace + ".svc"
}

// servingCertificate loads the certificate from CertDir and watches it
// until ctx ends, or issues one from the serving CA shared by all replicas.
func (r *Runnable) servingCertificate(ctx context.Context) (servingCert, error) {
	if dir := r.Opts.CertDir; dir != "" {
		w, err := certwatcher.New(filepath.Join(dir, CertDirCertFile), filepath.Join(dir, CertDirKeyFile))
		if err != nil {
			return servingCert{}, fmt.Errorf("loading the access API's serving certificate from %s: %w", dir, err)
		}
		var caPEM []byte
		if r.Opts.RegisterAPIService {
			// The manager writes the caBundle only when asked to; with
			// cert-manager, its cainjector fills it in from the Certificate
			// (the chart's cert-manager.io/inject-ca-from annotation).
			if caPEM, err = os.ReadFile(filepath.Join(dir, CertDirCAFile)); err != nil {
				return servingCert{}, fmt.Errorf("registering the APIService needs the serving certificate's CA in %s: %w "+
					"(or let cert-manager's cainjector fill in its caBundle: --access-register-apiservice=false)", dir, err)
			}
		}
		go func() {
			if err := w.WithWatchInterval(certWatchInterval).Start(ctx); err != nil {
				ctrl.LoggerFrom(ctx).Error(err, "Failed watching the access API's serving certificate", "dir", dir)
			}
		}()
		return servingCert{get: w.GetCertificate, caPEM: caPEM, source: dir}, nil
	}
	// One serving CA for all replicas (stored in a Secret): the APIService
	// has one caBundle, which must verify whichever replica the Service
	// reaches.
	ca, err := EnsureServingCA(ctx, r.Client, r.Opts.Namespace)
	if err != nil {
		return servingCert{}, err
	}
	svc := r.serviceHost()
	cert, err := NewRotatingCert(func() (KeyPair, error) {
		return ca.IssueServer("sandbox-access", []string{svc, svc + ".cluster.local", "localhost", "127.0.0.1"}, servingValidity)
	})
	if err != nil {
		return servingCert{}, err
	}
	return servingCert{get: cert.GetCertificate, caPEM: ca.CertPEM, source: "Secret " + r.Opts.Namespace + "/" + ServingCAName}, nil
}

// registerAPIService points the APIService at the Service with this
// process's serving CA (server-side apply: the manager owns these fields).
func (r *Runnable) registerAPIService(ctx context.Context, port int, caPEM []byte) error {
	as := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
		"metadata": map[string]any{"name": Version + "." + Group},
		"spec": map[string]any{
			"group": Group, "version": Version,
			"service":              map[string]any{"namespace": r.Opts.Namespace, "name": r.Opts.ServiceName, "port": int64(port)},
			"caBundle":             base64.StdEncoding.EncodeToString(caPEM),
			"groupPriorityMinimum": int64(1000), "versionPriority": int64(15),
		},
	}}
	if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(as), client.FieldOwner("sandbox-manager"), client.ForceOwnership); err != nil {
		return fmt.Errorf("registering the APIService %s (port %s): %w", as.GetName(), strconv.Itoa(port), err)
	}
	return nil
}
