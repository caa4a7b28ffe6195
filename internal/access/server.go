package access

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Group and Version of the access API.
const (
	Group   = "subresources.sandbox.microvm.dev"
	Version = "v1alpha1"
)

// Subresources of sandboxes served here, with the verbs RBAC grants for
// them: streaming clients use GET (websocket) or POST (SPDY), so exec and
// attach need both get and create, as pods/exec does.
var Subresources = map[string][]string{
	"exec":    {"get", "create"},
	"attach":  {"get", "create"},
	"log":     {"get"},
	"files":   {"get", "create"},
	"metrics": {"get"},
}

// Target is what a request reaches: one subresource of one Sandbox, for
// one user.
type Target struct {
	Namespace, Name, Subresource string
	User                         User
}

// Backend serves an authorized request (streams it to the node agent).
type Backend interface {
	Serve(w http.ResponseWriter, r *http.Request, t Target)
}

// Authorizer decides whether a user may do verb on a sandbox subresource.
type Authorizer interface {
	Authorize(ctx context.Context, u User, verb string, t Target) (allowed bool, reason string, err error)
}

// Server is the access API's HTTP handler.
type Server struct {
	Authn   RequestHeader
	Authz   Authorizer
	Backend Backend
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimSuffix(r.URL.Path, "/")
	switch path {
	case "/healthz", "/readyz", "/livez":
		_, _ = w.Write([]byte("ok"))
		return
	case "/apis":
		writeJSON(w, http.StatusOK, &metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"},
			Groups: []metav1.APIGroup{apiGroup()}})
		return
	case "/apis/" + Group:
		g := apiGroup()
		g.TypeMeta = metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"}
		writeJSON(w, http.StatusOK, &g)
		return
	case "/apis/" + Group + "/" + Version:
		writeJSON(w, http.StatusOK, resourceList())
		return
	}
	t, ok := parseTarget(path)
	if !ok {
		writeStatus(w, apierrors.NewNotFound(schema.GroupResource{Group: Group, Resource: "sandboxes"}, path))
		return
	}
	u, err := s.Authn.Authenticate(r)
	if err != nil {
		writeStatus(w, apierrors.NewUnauthorized(err.Error()))
		return
	}
	t.User = u
	verb := verbFor(r.Method)
	allowed, reason, err := s.Authz.Authorize(r.Context(), u, verb, t)
	if err != nil {
		writeStatus(w, apierrors.NewInternalError(fmt.Errorf("authorizing: %w", err)))
		return
	}
	if !allowed {
		msg := fmt.Sprintf("user %q cannot %s resource \"sandboxes/%s\" in API group %q in the namespace %q", u.Name, verb, t.Subresource, Group, t.Namespace)
		if reason != "" {
			msg += ": " + reason
		}
		writeStatus(w, apierrors.NewForbidden(schema.GroupResource{Group: Group, Resource: "sandboxes/" + t.Subresource}, t.Name, errors.New(msg)))
		return
	}
	s.Backend.Serve(w, r, t)
}

// parseTarget reads /apis/<group>/<version>/namespaces/<ns>/sandboxes/<name>/<sub>.
func parseTarget(path string) (Target, bool) {
	rest, ok := strings.CutPrefix(path, "/apis/"+Group+"/"+Version+"/namespaces/")
	if !ok {
		return Target{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 || parts[1] != "sandboxes" {
		return Target{}, false
	}
	if _, known := Subresources[parts[3]]; !known {
		return Target{}, false
	}
	if len(validation.IsDNS1123Label(parts[0])) > 0 || len(validation.IsDNS1123Subdomain(parts[2])) > 0 {
		return Target{}, false
	}
	return Target{Namespace: parts[0], Name: parts[2], Subresource: parts[3]}, true
}

func verbFor(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead:
		return "get"
	case http.MethodPost:
		return "create"
	case http.MethodPut:
		return "update"
	case http.MethodPatch:
		return "patch"
	case http.MethodDelete:
		return "delete"
	}
	return strings.ToLower(method)
}

func apiGroup() metav1.APIGroup {
	gv := metav1.GroupVersionForDiscovery{GroupVersion: Group + "/" + Version, Version: Version}
	return metav1.APIGroup{Name: Group, Versions: []metav1.GroupVersionForDiscovery{gv}, PreferredVersion: gv}
}

func resourceList() *metav1.APIResourceList {
	l := &metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"}, GroupVersion: Group + "/" + Version}
	for _, sub := range []string{"exec", "attach", "log", "files", "metrics"} {
		l.APIResources = append(l.APIResources, metav1.APIResource{Name: "sandboxes/" + sub, Namespaced: true, Kind: "Sandbox", Verbs: Subresources[sub]})
	}
	return l
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeStatus(w http.ResponseWriter, err *apierrors.StatusError) {
	st := err.Status()
	st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	writeJSON(w, int(st.Code), &st)
}

// SubjectAccessReviews authorizes with the API server's own authorizer
// (RBAC) through SubjectAccessReview.
type SubjectAccessReviews struct {
	Client client.Client
}

// Authorize implements Authorizer.
func (a SubjectAccessReviews) Authorize(ctx context.Context, u User, verb string, t Target) (bool, string, error) {
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: u.Name, Groups: u.Groups,
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: t.Namespace, Verb: verb, Group: Group, Version: Version,
			Resource: "sandboxes", Subresource: t.Subresource, Name: t.Name,
		},
	}}
	if len(u.Extra) > 0 {
		sar.Spec.Extra = map[string]authorizationv1.ExtraValue{}
		for k, v := range u.Extra {
			sar.Spec.Extra[k] = v
		}
	}
	if err := a.Client.Create(ctx, sar); err != nil {
		return false, "", err
	}
	return sar.Status.Allowed, sar.Status.Reason, nil
}
