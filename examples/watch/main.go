// Command watch prints a line each time a Sandbox's phase, node or Ready
// condition changes. It is an example of watching Sandboxes from Go with the
// generated client-go code of this repository:
//
//   - pkg/client/clientset/versioned: the typed clientset;
//   - pkg/client/informers/externalversions: the SharedInformerFactory, which
//     lists the Sandboxes once, keeps a local cache of them up to date with a
//     watch, and calls event handlers for each change.
//
// Copy it as a starting point: everything it does is in run, which takes a
// *rest.Config, so it can be called from tests or from a larger program.
//
// Usage:
//
//	go run ./examples/watch [--kubeconfig FILE] [--namespace NS]
//
// Output, one line per change (missing values print as <none>; ready is
// Unknown while the Sandbox has no Ready condition):
//
//	default/demo phase=<none> node=<none> ready=Unknown reason=<none>
//	default/demo phase=Starting node=local ready=False reason=Starting
//	default/demo phase=Running node=local ready=True reason=Running
//	default/demo deleted
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/pkg/client/clientset/versioned"
	"github.com/microvm-dev/sandbox-operator/pkg/client/informers/externalversions"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "",
		"path to a kubeconfig file; empty means $KUBECONFIG, then ~/.kube/config, then the in-cluster config")
	namespace := flag.String("namespace", metav1.NamespaceAll,
		"watch only this namespace; empty means all namespaces")
	flag.Parse()

	cfg, err := loadConfig(*kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "watch:", err)
		os.Exit(1)
	}

	// Stop cleanly on Ctrl-C (SIGINT) or SIGTERM: cancelling the context
	// stops the informers and makes run return.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := run(ctx, cfg, *namespace, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "watch:", err)
		os.Exit(1)
	}
}

// loadConfig builds a *rest.Config the way kubectl does: an explicit
// --kubeconfig wins; otherwise the files in $KUBECONFIG are merged, or
// ~/.kube/config is used; the current context of the result is selected.
// Without any kubeconfig it falls back to the in-cluster service account.
func loadConfig(path string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
}

// run watches the Sandboxes of namespace (all namespaces when empty) and
// writes a line to out for each one that appears, changes phase, node or
// Ready condition, or is deleted. It returns nil once ctx is done, or an
// error when the Sandboxes cannot be listed (no Sandbox CRD, no permission).
//
// out is written from one goroutine at a time, but not from the caller's:
// if the caller reads it while run is running, it must synchronize.
func run(ctx context.Context, cfg *rest.Config, namespace string, out io.Writer) error {
	clientset, err := versioned.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("creating the clientset: %w", err)
	}

	// Fail fast with a readable error when the API server has no Sandbox
	// resource or we may not list it. The informer would otherwise retry
	// (and log) forever.
	if _, err := clientset.SandboxV1alpha1().Sandboxes(namespace).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		return fmt.Errorf("listing sandboxes: %w", err)
	}

	// The factory shares one informer (one list + watch, one cache) per
	// resource type among everything that asks for it. A resync period of 0
	// disables periodic resyncs: handlers are called only for real changes.
	factory := externalversions.NewSharedInformerFactoryWithOptions(clientset, 0,
		externalversions.WithNamespace(namespace))

	// TypedInformer is the type-safe variant of Informer(): handlers receive
	// *sandboxv1alpha1.Sandbox instead of interface{}. Asking for the informer
	// registers it with the factory; it must happen before Start.
	informer := factory.Sandbox().V1alpha1().Sandboxes().TypedInformer()

	// The handlers of one registration are called one at a time, in order,
	// from a goroutine of the informer, so writing to out needs no lock here.
	_, err = informer.AddTypedEventHandler(cache.TypedResourceEventHandlerFuncs[*sandboxv1alpha1.Sandbox]{
		// AddFunc is called for every Sandbox of the initial list, then for
		// each new one.
		AddFunc: func(sb *sandboxv1alpha1.Sandbox) {
			fmt.Fprintf(out, "%s/%s %s\n", sb.Namespace, sb.Name, summarize(sb))
		},
		// UpdateFunc is called for every change of a Sandbox: spec,
		// metadata and status alike. Print only when the part we show
		// changed.
		UpdateFunc: func(oldSB, newSB *sandboxv1alpha1.Sandbox) {
			if s := summarize(newSB); s != summarize(oldSB) {
				fmt.Fprintf(out, "%s/%s %s\n", newSB.Namespace, newSB.Name, s)
			}
		},
		// DeleteFunc gets a DeletedObject: if the watch missed the deletion
		// the last state may be unknown, but the namespace/name key always
		// is.
		DeleteFunc: func(d cache.DeletedObject[*sandboxv1alpha1.Sandbox]) {
			fmt.Fprintf(out, "%s deleted\n", d.GetObjectName())
		},
	})
	if err != nil {
		return fmt.Errorf("adding the event handler: %w", err)
	}

	// Start the informers in the background; they stop when ctx is
	// cancelled. Shutdown waits for their goroutines to end.
	factory.StartWithContext(ctx)
	defer factory.Shutdown()

	// Wait for the initial list to be in the cache. A real program would
	// read the cache (factory.Sandbox().V1alpha1().Sandboxes().Lister())
	// only after this. It fails only when ctx ends first.
	if res := factory.WaitForCacheSyncWithContext(ctx); res.Err != nil {
		return nil
	}

	// The handlers do the work from here on. A cancelled context is how run
	// is asked to stop, not an error.
	<-ctx.Done()
	return nil
}

// summarize renders the part of a Sandbox's status that run reports:
// "phase=P node=N ready=S reason=R".
func summarize(sb *sandboxv1alpha1.Sandbox) string {
	ready, reason := string(metav1.ConditionUnknown), ""
	if c := meta.FindStatusCondition(sb.Status.Conditions, sandboxv1alpha1.ConditionReady); c != nil {
		ready, reason = string(c.Status), c.Reason
	}
	return fmt.Sprintf("phase=%s node=%s ready=%s reason=%s",
		orNone(string(sb.Status.Phase)), orNone(sb.Status.NodeName), ready, orNone(reason))
}

// orNone prints empty values as <none>, as kubectl does.
func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}
