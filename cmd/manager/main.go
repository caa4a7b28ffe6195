// Command manager runs the sandbox-operator manager: it places Sandboxes on
// SandboxNodes and drives their lifecycle. See docs/architecture.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/access"
	"github.com/microvm-dev/sandbox-operator/internal/controller"
	"github.com/microvm-dev/sandbox-operator/internal/placement"
	"github.com/microvm-dev/sandbox-operator/internal/version"
)

var (
	scheme   = runtime.NewScheme()
	setupLog = ctrl.Log.WithName("setup")
)

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(sandboxv1alpha1.AddToScheme(scheme))
}

func main() {
	var (
		metricsAddr, probeAddr, leaseNamespace, leaderElectionNamespace string
		enableLeaderElection                                            bool
		nodeLostGrace, restartBackoff, maxRestartBackoff, assumeTTL     time.Duration
		workers, qps, burst                                             int
		accessOpts                                                      access.Options
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "The address the Prometheus metrics endpoint binds to (0 disables it).")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "The address the health probe endpoint binds to.")
	flag.BoolVar(&enableLeaderElection, "leader-elect", true, "Elect a leader so that only one manager is active.")
	flag.StringVar(&leaseNamespace, "lease-namespace", "sandbox-system", "Namespace of the node agents' heartbeat Leases.")
	flag.StringVar(&leaderElectionNamespace, "leader-election-namespace", "", "Namespace of the leader election Lease (default: --lease-namespace).")
	flag.DurationVar(&nodeLostGrace, "node-lost-grace", 40*time.Second, "How long past its Lease's expiry a node counts as lost.")
	flag.DurationVar(&restartBackoff, "restart-backoff", 10*time.Second, "First delay of a restartPolicy restart after a failure; doubles per restart.")
	flag.DurationVar(&maxRestartBackoff, "max-restart-backoff", 5*time.Minute, "Longest restart delay.")
	flag.DurationVar(&assumeTTL, "assume-ttl", 30*time.Second, "How long an in-flight placement counts against a node before the cache must confirm it.")
	flag.IntVar(&workers, "max-concurrent-reconciles", 8, "Sandbox reconcile workers.")
	flag.IntVar(&qps, "kube-api-qps", 200, "Queries per second to the API server.")
	flag.IntVar(&burst, "kube-api-burst", 400, "Burst of queries to the API server.")
	flag.StringVar(&accessOpts.BindAddress, "access-bind-address", "", "Where to serve the access API (exec, logs, files, metrics of sandboxes) to the kube-apiserver's aggregation layer; empty serves none.")
	flag.StringVar(&accessOpts.ServiceName, "access-service", "sandbox-access", "The Service in front of the access API (in --lease-namespace), which the APIService points at.")
	flag.IntVar(&accessOpts.ServicePort, "access-service-port", 0, "The Service's port (default: the bound port).")
	flag.BoolVar(&accessOpts.RegisterAPIService, "access-register-apiservice", true, "Create or update the APIService v1alpha1.subresources.sandbox.microvm.dev with this process's serving CA.")
	flag.StringVar(&accessOpts.CertDir, "access-cert-dir", "", "A directory with the access API's serving certificate as a kubernetes.io/tls Secret mounts it (tls.crt, tls.key; ca.crt for --access-register-apiservice), e.g. from cert-manager; watched for renewals. Empty: the manager issues its own from the CA in the Secret sandbox-access-serving-ca.")
	opts := zap.Options{Development: true}
	opts.BindFlags(flag.CommandLine)
	showVersion := flag.Bool("version", false, "Print the version and exit.")
	flag.Parse()
	if *showVersion {
		fmt.Println("manager", version.Version)
		return
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	if leaderElectionNamespace == "" {
		leaderElectionNamespace = leaseNamespace
	}
	cfg := ctrl.GetConfigOrDie()
	cfg.QPS, cfg.Burst = float32(qps), burst

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          enableLeaderElection,
		LeaderElectionID:        "sandbox-manager.sandbox.microvm.dev",
		LeaderElectionNamespace: leaderElectionNamespace,
		// The manager stops when it loses the lease: let a new leader start
		// at once.
		LeaderElectionReleaseOnCancel: true,
		Cache: cache.Options{
			// The manager never reads managedFields (it builds its apply
			// configurations from scratch): drop them to halve the cache.
			DefaultTransform: cache.TransformStripManagedFields(),
			// Node heartbeats live in one namespace; don't cache every Lease
			// in the cluster.
			ByObject: map[client.Object]cache.ByObject{
				&coordinationv1.Lease{}: {Namespaces: map[string]cache.Config{leaseNamespace: {}}},
				// Only the EndpointSlices of Sandboxes' Services (Services
				// are cached whole: a foreign one of a Sandbox's name must
				// be seen to be left alone).
				&discoveryv1.EndpointSlice{}: {Label: labels.SelectorFromSet(labels.Set{
					discoveryv1.LabelManagedBy: controller.EndpointSliceManagedBy,
				})},
			},
		},
	})
	if err != nil {
		setupLog.Error(err, "Failed to create manager")
		os.Exit(1)
	}

	if err := (&controller.SandboxReconciler{
		Client:                  mgr.GetClient(),
		Recorder:                mgr.GetEventRecorder("sandbox-manager"),
		Assumer:                 placement.NewAssumer(assumeTTL),
		LeaseNamespace:          leaseNamespace,
		NodeLostGrace:           nodeLostGrace,
		RestartBackoff:          restartBackoff,
		MaxRestartBackoff:       maxRestartBackoff,
		MaxConcurrentReconciles: workers,
	}).SetupWithManager(mgr); err != nil {
		setupLog.Error(err, "Failed to create controller", "controller", "Sandbox")
		os.Exit(1)
	}
	if err := metrics.Registry.Register(controller.NewPhaseCollector(mgr.GetCache())); err != nil {
		setupLog.Error(err, "Failed to register the phase collector")
		os.Exit(1)
	}

	if accessOpts.BindAddress != "" {
		accessOpts.Namespace = leaseNamespace
		// Uncached: the access API reads a few ConfigMaps and Secrets once;
		// the manager must not cache every one in the cluster.
		direct, err := client.New(cfg, client.Options{Scheme: scheme})
		if err != nil {
			setupLog.Error(err, "Failed to create the access API's client")
			os.Exit(1)
		}
		if err := mgr.Add(&access.Runnable{Client: direct, Reader: mgr.GetClient(), Opts: accessOpts}); err != nil {
			setupLog.Error(err, "Failed to set up the access API")
			os.Exit(1)
		}
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		setupLog.Error(err, "Failed to set up health check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		setupLog.Error(err, "Failed to set up ready check")
		os.Exit(1)
	}

	setupLog.Info("Starting manager")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		setupLog.Error(err, "Failed to run manager")
		os.Exit(1)
	}
}
