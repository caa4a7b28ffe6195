package nodeagent

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/access"
	"github.com/microvm-dev/sandbox-operator/internal/egressproxy"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/netpolicy"
	"github.com/microvm-dev/sandbox-operator/internal/netstack"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// A sandbox's network: the guest's NIC is QEMU's stream netdev, whose
// socket QEMU serves in the run directory; the agent runs one userspace
// stack per VM (internal/netstack) and dials that socket, again after each
// disconnection and after its own restart (a re-adopted VM gets a new
// stack with the same addresses). Published ports are node listeners that
// the stack dials into the guest.

// resolvConf is where the node's resolvers are read when a sandbox names
// none.
const resolvConf = "/etc/resolv.conf"

// networkEnabled says whether the sandbox's VM gets a NIC (the default).
func networkEnabled(sbx *sandboxv1alpha1.Sandbox) bool {
	n := sbx.Spec.Network
	return n == nil || n.Enabled == nil || *n.Enabled
}

// vmNetworkDevice is the VM's NIC.
func vmNetworkDevice() *vmm.NetworkDevice {
	return &vmm.NetworkDevice{MAC: netstack.GuestMAC.String()}
}

// nameservers are the upstreams of a sandbox's resolver: spec.network.dns
// or the node's, as "IP:port".
func nameservers(spec *sandboxv1alpha1.NetworkSpec, node []string) []string {
	if spec == nil || spec.DNS == nil || len(spec.DNS.Nameservers) == 0 {
		return node
	}
	out := make([]string, 0, len(spec.DNS.Nameservers))
	for _, ns := range spec.DNS.Nameservers {
		if ap, err := netip.ParseAddrPort(ns); err == nil {
			out = append(out, ap.String())
		} else if a, err := netip.ParseAddr(strings.Trim(ns, "[]")); err == nil {
			out = append(out, netip.AddrPortFrom(a, 53).String())
		}
	}
	return out
}

// nodeResolvers reads the node's nameservers from resolv.conf.
func nodeResolvers(path string) []string {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		out = append(out, net.JoinHostPort(s, cc.Port))
	}
	return out
}

// vmNet is the network of one VM on the node.
type vmNet struct {
	stack *netstack.Net
	// ports are the published ports listening; portErrors say why the
	// others are not.
	ports      []sandboxv1alpha1.PortStatus
	portErrors []string

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closers []io.Closer // the published ports' listeners and sockets
	// reporting is set while a report of new denials is pending.
	reporting atomic.Bool

	mu        sync.Mutex
	lastEvent map[string]time.Time // per secret: the last SecretBlocked event
}

// denialReportDelay batches denials into one status write: a guest that
// scans a network must not cause a write per refused flow.
const denialReportDelay = 2 * time.Second

// denied asks for a reconcile of the sandbox (which reports the denials in
// its status), at most once per denialReportDelay.
func (vn *vmNet) denied(ctx context.Context, notify chan<- event.GenericEvent, key types.NamespacedName) {
	if !vn.reporting.CompareAndSwap(false, true) {
		return
	}
	time.AfterFunc(denialReportDelay, func() {
		vn.reporting.Store(false)
		requestReconcile(ctx, notify, key)
	})
}

// maxStatusDenials bounds status.network.recentDenials.
const maxStatusDenials = 10

// networkStatus is the status.network of the VM's stack: the total and the
// latest denials.
func (vn *vmNet) networkStatus() *sandboxv1alpha1.NetworkStatus {
	snap := vn.stack.Denials.Snapshot()
	if snap.Total == 0 {
		return nil
	}
	ns := &sandboxv1alpha1.NetworkStatus{DeniedTotal: int64(snap.Total)}
	recent := snap.Recent
	if len(recent) > maxStatusDenials {
		recent = recent[len(recent)-maxStatusDenials:]
	}
	for _, d := range recent {
		names := d.Names
		if len(names) > 4 {
			names = names[:4]
		}
		reason := d.Reason
		if len(reason) > 512 {
			reason = reason[:512]
		}
		ns.RecentDenials = append(ns.RecentDenials, sandboxv1alpha1.NetworkDenial{
			Time: metav1.NewTime(d.Time.Truncate(time.Second)), Protocol: d.Proto.String(), Destination: d.Dst.String(),
			Names: slices.Clone(names), Class: d.Class, Reason: reason})
	}
	return ns
}

// startNetwork makes h's stack, links it to the VM and opens the published
// ports. A policy that does not compile is an error (admission checks the
// same rules, so it means an agent older than the API).
func (r *SandboxReconciler) startNetwork(log logr.Logger, sbx *sandboxv1alpha1.Sandbox, h *vmHandle, objs objects) error {
	policy, err := netpolicy.Compile(sbx.Spec.Network, netpolicy.HostInfo{Addrs: r.hostAddrs, Resolver: netstack.DefaultResolver})
	if err != nil {
		return err
	}
	vn := &vmNet{}
	cfg := netstack.Config{Policy: policy, Upstreams: nameservers(sbx.Spec.Network, r.nodeResolvers), Log: log.WithName("network"),
		OnDenial: func() { vn.denied(r.ctx, r.notify, h.key) }}
	if spec := sbx.Spec.Network; spec != nil && spec.DNS != nil && spec.DNS.QueryTimeoutMillis > 0 {
		cfg.QueryTimeout = time.Duration(spec.DNS.QueryTimeoutMillis) * time.Millisecond
	}
	st, err := netstack.New(cfg)
	if err != nil {
		return err
	}
	if hasSecrets(sbx) {
		p, err := r.secretsProxy(log, sbx, h, st, objs)
		if err != nil {
			st.Close()
			return err
		}
		st.SetInterceptor(p)
	}
	ctx, cancel := context.WithCancel(r.ctx)
	vn.stack, vn.cancel = st, cancel
	vn.wg.Go(func() { vn.link(ctx, log, h.vm) })
	if spec := sbx.Spec.Network; spec != nil {
		for _, p := range spec.Ports {
			vn.publish(p)
		}
	}
	h.net = vn
	return nil
}

// link keeps the stack connected to the VM's NIC until ctx ends or the VM
// exits.
func (vn *vmNet) link(ctx context.Context, log logr.Logger, vm vmm.VM) {
	for {
		conn, err := vm.DialNet(ctx)
		if err == nil {
			err = vn.stack.Serve(ctx, conn)
		}
		select {
		case <-ctx.Done():
			return
		case <-vm.Done():
			return
		case <-time.After(redialPause):
		}
		if err != nil {
			log.V(4).Info("Reconnecting to the VM's network device", "error", err.Error())
		}
	}
}

// publish opens a published port on the node.
func (vn *vmNet) publish(p sandboxv1alpha1.PublishedPort) {
	proto := p.Protocol
	if proto == "" {
		proto = sandboxv1alpha1.ProtocolTCP
	}
	hostIP := p.HostIP
	if hostIP == "" {
		hostIP = "127.0.0.1"
	}
	addr := net.JoinHostPort(hostIP, strconv.Itoa(int(p.HostPort)))
	if proto == sandboxv1alpha1.ProtocolUDP {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			vn.portErrors = append(vn.portErrors, fmt.Sprintf("UDP port %d: %v", p.GuestPort, err))
			return
		}
		vn.closers = append(vn.closers, pc)
		vn.ports = append(vn.ports, sandboxv1alpha1.PortStatus{GuestPort: p.GuestPort, Protocol: proto, HostIP: hostIP, HostPort: p.HostPort})
		vn.wg.Go(func() { _ = vn.stack.PublishUDP(pc, uint16(p.GuestPort)) })
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		vn.portErrors = append(vn.portErrors, fmt.Sprintf("port %d: %v", p.GuestPort, err))
		return
	}
	vn.closers = append(vn.closers, ln)
	vn.ports = append(vn.ports, sandboxv1alpha1.PortStatus{GuestPort: p.GuestPort, Protocol: proto, HostIP: hostIP, HostPort: p.HostPort})
	vn.wg.Go(func() { _ = vn.stack.Publish(ln, uint16(p.GuestPort)) })
}

// close stops the ports, the link and the stack.
func (vn *vmNet) close() {
	vn.cancel()
	for _, c := range vn.closers {
		_ = c.Close()
	}
	vn.stack.Close()
	vn.wg.Wait()
}

// observeNetwork reports the published ports and the NetworkReady
// condition while the VM runs; both go with its exit.
func observeNetwork(sbx *sandboxv1alpha1.Sandbox, st *sandboxState, h *vmHandle, running bool) {
	if !running {
		st.report.Ports, st.report.Network = nil, nil
		return
	}
	if h.net == nil {
		st.report.Ports, st.report.Network = nil, nil
		if !networkEnabled(sbx) {
			setCond(st, sbx, sandboxv1alpha1.ConditionNetworkReady, metav1.ConditionTrue, sandboxv1alpha1.ReasonNetworkDisabled,
				"network.enabled is false: the guest has no network interface")
		}
		return
	}
	st.report.Ports = h.net.ports
	st.report.Network = h.net.networkStatus()
	if len(h.net.portErrors) > 0 {
		setCond(st, sbx, sandboxv1alpha1.ConditionNetworkReady, metav1.ConditionFalse, sandboxv1alpha1.ReasonPortUnavailable,
			trim("Published ports not open: "+strings.Join(h.net.portErrors, "; ")))
		return
	}
	msg := "The guest's network is linked to the node's stack"
	if len(h.net.ports) > 0 {
		var eps []string
		for _, p := range h.net.ports {
			eps = append(eps, fmt.Sprintf("%s:%d→%d/%s", p.HostIP, p.HostPort, p.GuestPort, p.Protocol))
		}
		msg += "; published: " + strings.Join(eps, ", ")
	}
	setCond(st, sbx, sandboxv1alpha1.ConditionNetworkReady, metav1.ConditionTrue, sandboxv1alpha1.ReasonNetworkConfigured, trim(msg))
}

// Secrets that never enter the VM (spec.network.secrets): the guest's env
// holds a placeholder; the VM's stack hands its HTTP(S) connections to the
// secrets proxy (internal/egressproxy), which substitutes the real value
// for the allowed hosts and blocks the placeholder elsewhere. TLS is
// intercepted with a CA of the sandbox's own, which the guest trusts
// (installed by patches before the main process starts) and which lives in
// the run directory, so that an agent that re-adopts the VM intercepts with
// the same.

// egressCAFile holds the sandbox's egress CA, certificate and key.
const egressCAFile = "egress-ca.pem"

// egressCAValidity bounds the egress CA: far beyond any run.
const egressCAValidity = 10 * 365 * 24 * time.Hour

// guestCABundle is where the guest's TLS clients find trusted roots
// (Debian's, which Go, OpenSSL and GnuTLS read); the CA is appended to it
// and also written alone next to it.
const (
	guestCABundle = "/etc/ssl/certs/ca-certificates.crt"
	guestCAFile   = "/etc/ssl/certs/sandbox-egress-ca.crt"
)

func hasSecrets(sbx *sandboxv1alpha1.Sandbox) bool {
	return networkEnabled(sbx) && sbx.Spec.Network != nil && len(sbx.Spec.Network.Secrets) > 0
}

// placeholderOf is the value the guest sees for a secret.
func placeholderOf(s sandboxv1alpha1.NetworkSecret) string {
	if s.Placeholder != "" {
		return s.Placeholder
	}
	return "$SANDBOX_SECRET_" + s.EnvVar
}

// planSecrets resolves the sandbox's network secrets: the proxy's view
// (with the values) and the guest's environment (placeholders only). A
// missing Secret or key is an error the caller retries.
func planSecrets(sbx *sandboxv1alpha1.Sandbox, objs objects) ([]egressproxy.Secret, []string, error) {
	var secrets []egressproxy.Secret
	var env []string
	for _, ns := range sbx.Spec.Network.Secrets {
		data, err := objs.secret(ns.SecretKeyRef.Name)
		if err != nil {
			return nil, nil, err
		}
		v, ok := data[ns.SecretKeyRef.Key]
		if !ok {
			return nil, nil, fmt.Errorf("network secret %s: key %q of Secret %s not found", ns.EnvVar, ns.SecretKeyRef.Key, ns.SecretKeyRef.Name)
		}
		s := egressproxy.Secret{Name: ns.EnvVar, Placeholder: placeholderOf(ns), Value: v, AllowedHosts: ns.AllowedHosts,
			Headers: true, BasicAuth: true}
		if in := ns.Injection; in != nil {
			s.Headers = in.Headers == nil || *in.Headers
			s.BasicAuth = in.BasicAuth == nil || *in.BasicAuth
			s.QueryParams, s.Body = in.QueryParams, in.Body
		}
		secrets = append(secrets, s)
		env = append(env, ns.EnvVar+"="+s.Placeholder)
	}
	return secrets, env, nil
}

// withEnv sets vars (KEY=VALUE) in env, replacing earlier values.
func withEnv(env, vars []string) []string {
	keys := map[string]bool{}
	for _, v := range vars {
		k, _, _ := strings.Cut(v, "=")
		keys[k] = true
	}
	out := slices.DeleteFunc(slices.Clone(env), func(e string) bool {
		k, _, _ := strings.Cut(e, "=")
		return keys[k]
	})
	return append(out, vars...)
}

// egressCA loads the sandbox's egress CA from its run directory, or makes
// and stores one when create is set.
func egressCA(dir string, create bool) (*access.CA, error) {
	path := filepath.Join(dir, egressCAFile)
	if b, err := os.ReadFile(path); err == nil {
		var certPEM, keyPEM []byte
		for rest := b; ; {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			switch blk.Type {
			case "CERTIFICATE":
				certPEM = pem.EncodeToMemory(blk)
			case "EC PRIVATE KEY":
				keyPEM = pem.EncodeToMemory(blk)
			}
		}
		return access.ParseCA(certPEM, keyPEM)
	} else if !create {
		return nil, fmt.Errorf("the sandbox's egress CA: %w", err)
	}
	ca, err := access.NewCA("sandbox-operator egress CA", egressCAValidity)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return nil, err
	}
	b := append(slices.Clone(ca.CertPEM), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("storing the sandbox's egress CA: %w", err)
	}
	return ca, nil
}

// trustPatches install the egress CA in the guest's trust store.
func trustPatches(ca *access.CA) []protocol.Patch {
	return []protocol.Patch{
		{Type: protocol.PatchText, Path: guestCAFile, Content: ca.CertPEM, Mode: 0o644},
		{Type: protocol.PatchAppend, Path: guestCABundle, Content: ca.CertPEM, Mode: 0o644},
	}
}

// egressRoots are the roots the secrets proxy verifies destinations with:
// the node's and those of the bundle file, if any.
func egressRoots(bundle string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if bundle == "" {
		return pool, nil
	}
	b, err := os.ReadFile(bundle)
	if err != nil {
		return nil, fmt.Errorf("reading the egress CA bundle: %w", err)
	}
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("the egress CA bundle %s holds no PEM certificate", bundle)
	}
	return pool, nil
}

// secretsProxy makes the VM's secrets proxy on its stack.
func (r *SandboxReconciler) secretsProxy(log logr.Logger, sbx *sandboxv1alpha1.Sandbox, h *vmHandle, st *netstack.Net, objs objects) (*egressproxy.Proxy, error) {
	secrets, _, err := planSecrets(sbx, objs)
	if err != nil {
		return nil, err
	}
	ca, err := egressCA(h.runDir, false)
	if err != nil {
		return nil, err
	}
	return &egressproxy.Proxy{CA: ca, Secrets: secrets, RootCAs: r.egressRoots, Dial: st.Dial, NamesOf: st.Names.Lookup,
		OnViolation: func(v egressproxy.Violation) { r.secretViolation(log, sbx, h, st, v) }}, nil
}

// violationEventInterval bounds the SecretBlocked events of one secret.
const violationEventInterval = 10 * time.Second

// secretViolation acts on a blocked placeholder as the secret's
// onViolation says: counted always (class "secret"; never the value), an
// event for BlockAndLog (the default), and a stop for BlockAndTerminate.
func (r *SandboxReconciler) secretViolation(log logr.Logger, sbx *sandboxv1alpha1.Sandbox, h *vmHandle, st *netstack.Net, v egressproxy.Violation) {
	msg := fmt.Sprintf("secret %s sent to %s (%s): blocked", v.Secret, v.Host, v.Where)
	st.RecordDenial(netpolicy.Flow{Proto: netpolicy.ProtoTCP, Dst: v.Dst, Names: []string{v.Host}},
		netpolicy.Decision{Rule: netpolicy.RuleNone, Class: classSecret, Reason: msg})
	log.Info("Blocked a secret's placeholder bound for a host it is not allowed to", "secret", v.Secret, "host", v.Host, "where", v.Where)
	action := sandboxv1alpha1.SecretViolationBlockAndLog
	for _, s := range sbx.Spec.Network.Secrets {
		if s.EnvVar == v.Secret && s.OnViolation != "" {
			action = s.OnViolation
		}
	}
	if action == sandboxv1alpha1.SecretViolationBlock {
		return
	}
	if r.recorder != nil && h.net.eventDue(v.Secret, v.Time) {
		r.recorder.Eventf(sbx, nil, corev1.EventTypeWarning, "SecretBlocked", "Block", "%s", msg)
	}
	if action == sandboxv1alpha1.SecretViolationBlockAndTerminate && h.violated.CompareAndSwap(false, true) {
		log.Info("Stopping the sandbox: its secret's onViolation is BlockAndTerminate", "secret", v.Secret)
		go requestReconcile(r.ctx, r.notify, h.key)
	}
}

// eventDue says whether a SecretBlocked event for secret may be recorded
// at t, and notes it.
func (vn *vmNet) eventDue(secret string, t time.Time) bool {
	vn.mu.Lock()
	defer vn.mu.Unlock()
	if last, ok := vn.lastEvent[secret]; ok && t.Sub(last) < violationEventInterval {
		return false
	}
	if vn.lastEvent == nil {
		vn.lastEvent = map[string]time.Time{}
	}
	vn.lastEvent[secret] = t
	return true
}

// classSecret is the Denials class of a blocked secret placeholder.
const classSecret = "secret"
