package access

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	ctrl "sigs.k8s.io/controller-runtime"
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
// +kubebuilder:rbac:groups=apiregistration.k8s.io,resources=apiservices,verbs=get;create;update;patch

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
}

// servingValidity is the lifetime of the serving certificate made at each
// start (the APIService's caBundle is updated with it).
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
	pair, err := ca.ManagerClientCert()
	if err != nil {
		return err
	}
	clientCert, err := pair.TLSCertificate()
	if err != nil {
		return err
	}
	// One serving CA for all replicas (stored in a Secret): the APIService
	// has one caBundle, which must verify whichever replica the Service
	// reaches.
	servingCA, err := EnsureServingCA(ctx, r.Client, r.Opts.Namespace)
	if err != nil {
		return err
	}
	svc := r.Opts.ServiceName + "." + r.Opts.Namespace + ".svc"
	serving, err := servingCA.IssueServer("sandbox-access", []string{svc, svc + ".cluster.local", "localhost", "127.0.0.1"}, servingValidity)
	if err != nil {
		return err
	}
	servingCert, err := serving.TLSCertificate()
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
		if err := r.registerAPIService(ctx, port, servingCA.CertPEM); err != nil {
			_ = ln.Close()
			return err
		}
	}
	srv := &http.Server{
		Handler: &Server{Authn: rh, Authz: SubjectAccessReviews{Client: r.Client},
			Backend: &AgentProxy{Client: r.Reader, ClientCert: clientCert}},
		ReadHeaderTimeout: 30 * time.Second,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{servingCert},
			ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: rh.ClientCAs},
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	log.Info("Serving the access API", "address", ln.Addr().String(), "service", svc)
	if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
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
