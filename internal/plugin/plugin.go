package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/microvm-dev/sandbox-operator/pkg/client/clientset/versioned"
)

// Group and Version of the access API (internal/access serves them).
const (
	accessGroup   = "subresources.sandbox.microvm.dev"
	accessVersion = "v1alpha1"
)

// Options is what every command shares: the connection flags and the
// terminal streams.
type Options struct {
	ConfigFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	// NewClientset builds the Sandbox clientset for start and stop; tests
	// replace it with the generated fake.
	NewClientset func(*rest.Config) (versioned.Interface, error)

	// newExecutor opens exec streams (newExecutor when nil); tests
	// replace it to see the URL and the streams without a streaming
	// server.
	newExecutor func(*rest.Config, *url.URL) (remotecommand.Executor, error)

	// fileUser is the file commands' --guest-user: the guest user
	// (USER[:GROUP] or UID[:GID]) the operations run as; empty means the
	// sandbox's runtime.user. Not --user: kubectl's --user names a
	// kubeconfig user.
	fileUser string
}

// addUserFlag gives a file command its --guest-user flag.
func (o *Options) addUserFlag(cmd *cobra.Command) *cobra.Command {
	cmd.Flags().StringVar(&o.fileUser, "guest-user", "",
		"Run the file operations as this guest user (USER[:GROUP] or UID[:GID]; default: the sandbox's runtime.user)")
	return cmd
}

// newConfigFlags are kubectl's connection flags, with its defaults.
func newConfigFlags() *genericclioptions.ConfigFlags {
	return genericclioptions.NewConfigFlags(true)
}

// NewCommand returns the root command of kubectl-sandbox.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	o := &Options{
		ConfigFlags: newConfigFlags(),
		IOStreams:   streams,
		NewClientset: func(c *rest.Config) (versioned.Interface, error) {
			return versioned.NewForConfig(c)
		},
	}
	return o.newRootCommand()
}

func (o *Options) newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "kubectl-sandbox",
		Short: "Work with microVM sandboxes: exec, logs, files, metrics, start and stop",
		Long: `kubectl sandbox reaches inside Sandboxes (sandbox.microvm.dev) with your
Kubernetes identity, through the access API subresources.sandbox.microvm.dev.`,
		Annotations: map[string]string{
			cobra.CommandDisplayNameAnnotation: "kubectl sandbox",
		},
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(o.In)
	root.SetOut(o.Out)
	root.SetErr(o.ErrOut)
	o.ConfigFlags.AddFlags(root.PersistentFlags())
	root.AddCommand(
		o.newExecCommand(),
		o.newAttachCommand(),
		o.newLogsCommand(),
		o.addUserFlag(o.newCpCommand()),
		o.addUserFlag(o.newLsCommand()),
		o.addUserFlag(o.newStatCommand()),
		o.addUserFlag(o.newMkdirCommand()),
		o.addUserFlag(o.newRmCommand()),
		o.addUserFlag(o.newMvCommand()),
		o.newTopCommand(),
		o.newStartCommand(),
		o.newStopCommand(),
	)
	return root
}

// restConfig returns the client configuration and the namespace that the
// flags (or the kubeconfig's context) name.
func (o *Options) restConfig() (*rest.Config, string, error) {
	cfg, err := o.ConfigFlags.ToRESTConfig()
	if err != nil {
		return nil, "", err
	}
	ns, _, err := o.ConfigFlags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, "", err
	}
	return cfg, ns, nil
}

// subresourceURL is the access API URL of a sandbox's subresource. The
// server may carry a path prefix (a proxy in front of the API server), so
// the path is appended to it.
func subresourceURL(cfg *rest.Config, ns, name, sub string, q url.Values) (*url.URL, error) {
	host := cfg.Host
	if !strings.Contains(host, "://") {
		host = "https://" + host // what client-go assumes for a bare host
	}
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("failed to parse the server address %q: %w", cfg.Host, err)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/apis/" + accessGroup + "/" + accessVersion +
		"/namespaces/" + url.PathEscape(ns) + "/sandboxes/" + url.PathEscape(name) + "/" + sub
	u.RawQuery = q.Encode()
	return u, nil
}

// accessClient makes plain HTTP requests to the access API with the
// user's credentials (for the non-streaming subresources).
type accessClient struct {
	cfg      *rest.Config
	http     *http.Client
	ns       string
	fileUser string // the files subresource's user, if set
}

func (o *Options) accessClient() (*accessClient, error) {
	cfg, ns, err := o.restConfig()
	if err != nil {
		return nil, err
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("failed to build the HTTP client: %w", err)
	}
	return &accessClient{cfg: cfg, http: hc, ns: ns, fileUser: o.fileUser}, nil
}

// do sends one request for a sandbox's subresource and returns the
// response when its status is 2xx; otherwise the server's metav1.Status
// as an error. The caller closes the body.
func (c *accessClient) do(ctx context.Context, method string, t target, sub string, q url.Values, body io.Reader) (*http.Response, error) {
	ns := t.Namespace
	if ns == "" {
		ns = c.ns
	}
	if sub == "files" && c.fileUser != "" {
		q.Set("user", c.fileUser)
	}
	u, err := subresourceURL(c.cfg, ns, t.Name, sub, q)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer func() { _ = resp.Body.Close() }()
		return nil, statusError(resp)
	}
	return resp, nil
}

// getJSON sends a request and decodes its JSON answer into v.
func (c *accessClient) getJSON(ctx context.Context, method string, t target, sub string, q url.Values, v any) error {
	resp, err := c.do(ctx, method, t, sub, q, nil)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("failed to decode the answer of %s: %w", sub, err)
	}
	return nil
}

// statusError reads a failed response: the server's metav1.Status when it
// sent one (its message is what the user sees, as with kubectl), else the
// generic error for the HTTP code.
func statusError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var st metav1.Status
	if err := json.Unmarshal(data, &st); err == nil && st.Kind == "Status" && st.Message != "" {
		if st.Code == 0 {
			st.Code = int32(resp.StatusCode)
		}
		return &apierrors.StatusError{ErrStatus: st}
	}
	msg := strings.TrimSpace(string(data))
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure,
		Code: int32(resp.StatusCode), Message: msg}}
}

// errUsage marks a command-line mistake.
var errUsage = errors.New("usage")

func usageErrorf(cmd *cobra.Command, format string, args ...any) error {
	return fmt.Errorf("%w: %s\nSee '%s -h' for help and examples", errUsage, fmt.Sprintf(format, args...), cmd.CommandPath())
}
