// Command node-agent runs on every node that hosts sandboxes (a privileged
// DaemonSet): it registers the node's SandboxNode, renews its heartbeat
// Lease and, with the VM runtime, boots the node's Sandboxes.
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"

	_ "k8s.io/client-go/plugin/pkg/client/auth"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/microvm-dev/sandbox-operator/internal/nodeagent"
)

func main() {
	args := nodeagent.DefaultArgs()
	flag.StringVar(&args.NodeName, "node-name", os.Getenv("NODE_NAME"), "This node's name (default $NODE_NAME, from the downward API).")
	flag.StringVar(&args.LeaseNamespace, "lease-namespace", args.LeaseNamespace, "Namespace of the heartbeat Lease.")
	flag.DurationVar(&args.LeaseDuration, "lease-duration", args.LeaseDuration, "How long one Lease renewal vouches for the node.")
	flag.DurationVar(&args.RenewInterval, "lease-renew-interval", args.RenewInterval, "Mean time between Lease renewals (jittered).")
	flag.BoolVar(&args.AllowEmulation, "allow-emulation", false, "Run VMs with QEMU's TCG emulation when /dev/kvm is not usable (slow; development and CI).")
	var reserveCPUs int
	flag.IntVar(&reserveCPUs, "reserve-cpus", int(args.Reserve.CPUs), "CPUs kept back from sandboxes for the host and the agent.")
	flag.Int64Var(&args.Reserve.MemoryMiB, "reserve-memory-mib", args.Reserve.MemoryMiB, "Memory (MiB) kept back from sandboxes.")
	var maxSandboxes int
	flag.IntVar(&maxSandboxes, "max-sandboxes", int(args.MaxSandboxes), "Sandbox slots of the node.")
	flag.StringVar(&args.KVMPath, "kvm-device", args.KVMPath, "The KVM device.")
	flag.StringVar(&args.Accelerator, "accelerator", args.Accelerator, "auto (KVM when /dev/kvm can create a VM, else TCG with --allow-emulation), kvm, or tcg.")
	flag.StringVar(&args.QEMUBinary, "qemu", args.QEMUBinary, "The QEMU binary.")
	flag.StringVar(&args.AccessAddr, "access-bind-address", "", "Where to serve the access API's backend (exec, logs, files, metrics) to the manager, with mutual TLS; empty serves none.")
	flag.StringVar(&args.AccessAdvertise, "access-advertise-address", "", "The host:port the manager dials for the access API (default: --access-bind-address; port 0 means the one bound).")
	flag.Func("node-address", "An IP address of this node that the cluster reaches, published as the SandboxNode's InternalIP for Sandboxes' Services (repeatable or comma-separated; in a DaemonSet, the downward API's status.hostIP). Unset publishes none.", func(v string) error {
		for f := range strings.SplitSeq(v, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(f))
			if err != nil {
				return err
			}
			if a.IsUnspecified() || a.Zone() != "" {
				return fmt.Errorf("%s is not an address other nodes can reach", a)
			}
			args.NodeAddresses = append(args.NodeAddresses, a.Unmap())
		}
		return nil
	})
	flag.StringVar(&args.EgressCABundle, "egress-ca-bundle", args.EgressCABundle, "A PEM file of extra root certificates the secrets proxy trusts when it verifies the servers sandboxes send network.secrets to (besides the node's roots).")
	flag.StringVar(&args.CgroupParent, "cgroup-parent", args.CgroupParent, "A cgroup v2 directory under which each VMM gets its own cgroup with the sandbox's CPU and memory limits (empty: VMMs stay in the agent's cgroup).")
	flag.StringVar(&args.StateDir, "state-dir", args.StateDir, "Directory of the VMs' run directories, the image cache and the initramfs (empty: the agent runs no sandboxes).")
	flag.StringVar(&args.ImageDir, "image-dir", args.ImageDir, "Root of the image cache (default <state-dir>/images).")
	flag.StringVar(&args.KernelPath, "kernel", args.KernelPath, "The guest kernel (vmlinux).")
	flag.StringVar(&args.InitrdPath, "initrd", args.InitrdPath, "A prebuilt initramfs with sandbox-init (default: built at start from --sandbox-init and --guest-modules).")
	flag.StringVar(&args.SandboxInitPath, "sandbox-init", args.SandboxInitPath, "The static sandbox-init binary packed into the initramfs.")
	flag.StringVar(&args.GuestModulesDir, "guest-modules", args.GuestModulesDir, "The guest kernel's modules directory (with modules.dep).")
	flag.StringVar(&args.MetricsAddr, "metrics-bind-address", args.MetricsAddr, "The address the metrics endpoint binds to (0 disables it).")
	flag.StringVar(&args.ProbeAddr, "health-probe-bind-address", args.ProbeAddr, "The address the health probe endpoint binds to.")
	showVersion := flag.Bool("version", false, "Print the version and exit.")
	opts := zap.Options{Development: true}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	if *showVersion {
		fmt.Println("node-agent", nodeagent.Version)
		return
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	args.Reserve.CPUs = int32(reserveCPUs)
	args.MaxSandboxes = int32(maxSandboxes)

	setupLog := ctrl.Log.WithName("setup")
	agent, err := nodeagent.New(nodeagent.WithArgs(args))
	if err != nil {
		setupLog.Error(err, "Failed to create the node agent")
		os.Exit(1)
	}
	setupLog.Info("Starting node agent", "node", args.NodeName)
	if err := agent.Run(ctrl.SetupSignalHandler()); err != nil {
		setupLog.Error(err, "Failed to run the node agent")
		os.Exit(1)
	}
}
