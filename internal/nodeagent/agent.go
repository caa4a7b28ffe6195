package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// RBAC of the node agent (config/rbac/node-agent). Narrowing writes to its
// own node's objects is the admission policy's job (a later issue).
// +kubebuilder:rbac:groups=sandbox.microvm.dev,resources=sandboxnodes,verbs=get;create;patch
// +kubebuilder:rbac:groups=sandbox.microvm.dev,resources=sandboxnodes/status,verbs=get;patch
// +kubebuilder:rbac:groups=sandbox.microvm.dev,resources=sandboxes,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=sandbox.microvm.dev,resources=sandboxes/status,verbs=get;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;create;update
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get
// +kubebuilder:rbac:groups="",resources=secrets;configmaps,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Args configure an Agent.
type Args struct {
	// NodeName is this node's name (the downward API's spec.nodeName).
	NodeName string
	// LeaseNamespace holds the heartbeat Lease (named after the node).
	LeaseNamespace string
	// LeaseDuration is how long one renewal vouches for the node.
	LeaseDuration time.Duration
	// RenewInterval is the mean time between renewals (jittered by 20%).
	RenewInterval time.Duration
	// Reserve is kept back from the host's capacity.
	Reserve Reserve
	// MaxSandboxes is the node's sandbox slots.
	MaxSandboxes int32
	// AllowEmulation lets the node run VMs with QEMU's TCG when /dev/kvm is
	// not usable (much slower; for development and CI).
	AllowEmulation bool
	// Accelerator overrides the probe: "auto" (the default) uses KVM when
	// /dev/kvm can create a VM, else TCG when AllowEmulation; "kvm" requires
	// KVM; "tcg" always emulates. (A /dev/kvm can pass the probe and still
	// not boot Linux guests, as in some nested setups: force "tcg" there.)
	Accelerator string
	// KVMPath and QEMUBinary locate the accelerator and the VMM.
	KVMPath, QEMUBinary string
	// CgroupParent is a cgroup v2 directory under which every VMM gets its
	// own cgroup (CPU and memory limits where the parent delegates those
	// controllers); "" leaves the VMMs in the agent's cgroup. In a
	// DaemonSet it must lie outside the agent container's cgroup, or a
	// container restart kills the VMs with it.
	CgroupParent string
	// EgressCABundle is a PEM file of extra root certificates the secrets
	// proxy trusts (besides the node's) when it verifies the servers that
	// sandboxes send secrets to; "" means the node's roots only.
	EgressCABundle string
	// AccessAddr is where the agent serves the access API's backend
	// (mutual TLS; "" serves none), and AccessAdvertise the host:port the
	// manager dials (published in SandboxNode status.access; a port 0 is
	// the one bound). The manager's client CA is read from the ConfigMap
	// sandbox-access-client-ca in LeaseNamespace.
	AccessAddr, AccessAdvertise string
	// MetricsAddr and ProbeAddr are the manager's endpoints ("0" disables).
	MetricsAddr, ProbeAddr string
	// Labels are added to the SandboxNode, over the Node's labels.
	Labels map[string]string
	// NodeAddresses are published as the SandboxNode's InternalIP
	// addresses, where the manager points Sandboxes' Services (in a
	// DaemonSet: the downward API's status.hostIP). Empty publishes none:
	// the agent does not guess which of the host's addresses the cluster
	// reaches.
	NodeAddresses []netip.Addr

	// StateDir holds the VMs' run directories (<StateDir>/vms/<uid>), the
	// image cache (unless ImageDir is set) and the built initramfs. Empty
	// disables running sandboxes (the agent only registers and heartbeats).
	StateDir string
	// ImageDir is the image cache's root (default <StateDir>/images).
	ImageDir string
	// KernelPath is the guest kernel (bin/guest/vmlinux).
	KernelPath string
	// InitrdPath is a prebuilt initramfs with sandbox-init. When empty, one
	// is built at start from SandboxInitPath and GuestModulesDir.
	InitrdPath string
	// SandboxInitPath is the static sandbox-init binary.
	SandboxInitPath string
	// GuestModulesDir is the guest kernel's modules directory (with
	// modules.dep; bin/guest/modules).
	GuestModulesDir string
}

// DefaultArgs are the flags' defaults.
func DefaultArgs() Args {
	return Args{
		LeaseNamespace: "sandbox-system",
		LeaseDuration:  40 * time.Second,
		RenewInterval:  10 * time.Second,
		Reserve:        Reserve{CPUs: 1, MemoryMiB: 1024},
		MaxSandboxes:   110,
		Accelerator:    "auto",
		KVMPath:        "/dev/kvm",
		QEMUBinary:     "qemu-system-x86_64",
		MetricsAddr:    ":8090",
		ProbeAddr:      ":8091",
	}
}

// Option configures New.
type Option func(*Agent)

// WithArgs sets the agent's arguments.
func WithArgs(a Args) Option { return func(ag *Agent) { ag.args = a } }

// WithConfig sets the API server connection (default: ctrl.GetConfig).
func WithConfig(c *rest.Config) Option { return func(ag *Agent) { ag.cfg = c } }

// Agent is one node's agent.
type Agent struct {
	args Args
	cfg  *rest.Config
	mgr  ctrl.Manager
}

// validateLease refuses a heartbeat that cannot work: a Lease holds whole
// seconds, and renewals must come well within one Lease's duration.
func (a Args) validateLease() error {
	if a.LeaseDuration < time.Second {
		return fmt.Errorf("--lease-duration %s: a Lease counts whole seconds, at least 1s", a.LeaseDuration)
	}
	if a.RenewInterval <= 0 || a.RenewInterval >= a.LeaseDuration {
		return fmt.Errorf("--lease-renew-interval %s must be positive and shorter than --lease-duration %s", a.RenewInterval, a.LeaseDuration)
	}
	return nil
}

var errNoNodeName = errors.New("the node name is required (set NODE_NAME from the downward API, or --node-name)")

// New builds an agent: a controller-runtime manager whose caches only see
// this node's objects, with the heartbeat as a runnable.
func New(opts ...Option) (*Agent, error) {
	a := &Agent{args: DefaultArgs()}
	for _, o := range opts {
		o(a)
	}
	if a.args.NodeName == "" {
		return nil, errNoNodeName
	}
	if err := a.args.validateLease(); err != nil {
		return nil, err
	}
	if a.cfg == nil {
		cfg, err := ctrl.GetConfig()
		if err != nil {
			return nil, fmt.Errorf("failed to load a kubeconfig: %w", err)
		}
		a.cfg = cfg
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(sandboxv1alpha1.AddToScheme(scheme))

	node := a.args.NodeName
	mgr, err := ctrl.NewManager(a.cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: a.args.MetricsAddr},
		HealthProbeBindAddress: a.args.ProbeAddr,
		// One agent per node: nothing to elect.
		LeaderElection: false,
		Cache: cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			// Like virt-handler's host-scoped informer, the cache holds this
			// node's Sandboxes only (status.nodeName is a CRD selectable
			// field). The heartbeat reads its Node, SandboxNode and Lease
			// with direct gets (GetAPIReader), never through the cache, so
			// the agent needs no list or watch on them (the RBAC markers
			// above grant get only).
			ByObject: map[client.Object]cache.ByObject{
				&sandboxv1alpha1.Sandbox{}: {Field: fields.OneTermEqualSelector("status.nodeName", node)},
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("failed to create the manager: %w", err)
	}
	hb := &heartbeat{
		client: mgr.GetAPIReader(), writer: mgr.GetClient(), args: a.args,
		probe: a.args.probe,
	}
	if err := mgr.Add(hb); err != nil {
		return nil, fmt.Errorf("failed to add the heartbeat: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("readyz", hb.ready); err != nil {
		return nil, err
	}
	if a.args.StateDir != "" {
		ctx, cancel := context.WithCancel(context.Background())
		sr, err := newSandboxReconciler(ctx, mgr.GetClient(), mgr.GetAPIReader(), a.args)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("failed to set up the Sandbox reconciler: %w", err)
		}
		sr.recorder = mgr.GetEventRecorder("sandbox-node-agent")
		if err := sr.SetupWithManager(mgr); err != nil {
			cancel()
			return nil, fmt.Errorf("failed to set up the Sandbox reconciler: %w", err)
		}
		if a.args.AccessAddr != "" {
			advertise := a.args.AccessAdvertise
			if advertise == "" {
				advertise = a.args.AccessAddr
			}
			as, err := newAccessServer(sr, mgr.GetAPIReader(), a.args.LeaseNamespace, a.args.AccessAddr, advertise)
			if err != nil {
				cancel()
				return nil, err
			}
			hb.access = &as.info
			if err := mgr.Add(as); err != nil {
				cancel()
				return nil, err
			}
		}
		// Directories of Sandboxes that left while the agent was down.
		if err := mgr.Add(sr.sweeper(mgr.GetCache())); err != nil {
			cancel()
			return nil, err
		}
		// The VM watchers stop with the manager.
		if err := mgr.Add(manager.RunnableFunc(func(mctx context.Context) error {
			<-mctx.Done()
			cancel()
			sr.Wait()
			sr.images.Close()
			return nil
		})); err != nil {
			cancel()
			return nil, err
		}
	}
	a.mgr = mgr
	return a, nil
}

// Run runs the agent until ctx ends.
func (a *Agent) Run(ctx context.Context) error { return a.mgr.Start(ctx) }
