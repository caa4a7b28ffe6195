package controller

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// EndpointSliceManagedBy is the endpointslice.kubernetes.io/managed-by
// label of the EndpointSlices the manager keeps for Sandboxes' Services. (A
// label value cannot hold a "/", so it is not the finalizer's name.)
const EndpointSliceManagedBy = "sandbox-manager.sandbox.microvm.dev"

// errInvalidService marks a Sandbox for which no valid Service can be made.
var errInvalidService = errors.New("invalid Service")

// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch;create;patch;delete

// reconcileService keeps the Sandbox's selectorless Service and its
// EndpointSlices in line with spec.network.ports and the node agent's
// status.ports, and records the ServiceReady condition. It runs after the
// phase is derived: an endpoint is ready exactly in phase Running. A pass
// without published ports deletes both, and so does reconcileDelete when
// the Sandbox's deletion begins; their controller owner reference lets
// garbage collection catch whatever is left.
func (r *SandboxReconciler) reconcileService(ctx context.Context, s *scope) (ctrl.Result, error) {
	svc, err := desiredService(s.sbx)
	if err != nil {
		setCondition(s.st, sandboxv1alpha1.ConditionServiceReady, metav1.ConditionFalse,
			sandboxv1alpha1.ReasonServiceInvalid, err.Error(), s.now)
		return ctrl.Result{}, r.removeService(ctx, s.sbx)
	}
	if svc == nil {
		meta.RemoveStatusCondition(&s.st.Conditions, sandboxv1alpha1.ConditionServiceReady)
		return ctrl.Result{}, r.removeService(ctx, s.sbx)
	}

	cur := &corev1.Service{}
	switch err := r.Get(ctx, client.ObjectKeyFromObject(svc), cur); {
	case apierrors.IsNotFound(err):
		if err := r.Create(ctx, svc); err != nil {
			if apierrors.IsAlreadyExists(err) {
				// Ours from an earlier pass that the cache has not shown
				// yet, or someone else's: the next pass tells them apart.
				return ctrl.Result{RequeueAfter: staleCacheRetry}, nil
			}
			return ctrl.Result{}, fmt.Errorf("failed to create Service %s: %w", klog.KObj(svc), err)
		}
		ctrl.LoggerFrom(ctx).Info("Created Service", "Service", klog.KObj(svc))
	case err != nil:
		return ctrl.Result{}, fmt.Errorf("failed to get Service %s: %w", klog.KObj(svc), err)
	case !metav1.IsControlledBy(cur, s.sbx):
		// Someone else's: leave it, and keep no EndpointSlices, which
		// would feed that Service our endpoints.
		msg := fmt.Sprintf("Service %s exists and is not controlled by this Sandbox; its published ports get no Service", svc.Name)
		if c := meta.FindStatusCondition(s.st.Conditions, sandboxv1alpha1.ConditionServiceReady); c == nil || c.Reason != sandboxv1alpha1.ReasonServiceConflict {
			s.event("Warning", sandboxv1alpha1.ReasonServiceConflict, "CreateService", "%s", msg)
		}
		setCondition(s.st, sandboxv1alpha1.ConditionServiceReady, metav1.ConditionFalse,
			sandboxv1alpha1.ReasonServiceConflict, msg, s.now)
		return ctrl.Result{}, r.syncEndpointSlices(ctx, s.sbx, nil)
	default:
		if err := r.updateService(ctx, cur, svc); err != nil {
			return ctrl.Result{}, err
		}
	}

	node, err := r.sandboxNodeOf(ctx, s.st.NodeName)
	if err != nil {
		return ctrl.Result{}, err
	}
	eps, unreachable := desiredEndpointSlices(s.sbx, s.st, node)
	if err := r.syncEndpointSlices(ctx, s.sbx, eps); err != nil {
		return ctrl.Result{}, err
	}
	msg := fmt.Sprintf("Service %s publishes %d port(s)", svc.Name, len(svc.Spec.Ports))
	if len(unreachable) > 0 {
		msg += "; not reachable in the cluster: " + strings.Join(unreachable, "; ")
	}
	setCondition(s.st, sandboxv1alpha1.ConditionServiceReady, metav1.ConditionTrue,
		sandboxv1alpha1.ReasonServiceSynced, msg, s.now)
	return ctrl.Result{}, nil
}

// updateService brings a Service the Sandbox controls to the desired ports,
// with one merge patch when they differ. Only the ports (and the selector,
// which must stay empty) are the manager's: a type an administrator changed
// (NodePort, LoadBalancer) and its allocated node ports are kept. A merge
// patch without optimistic lock is enough: nobody else writes these fields,
// and a JSON merge patch replaces the ports list as a whole.
func (r *SandboxReconciler) updateService(ctx context.Context, cur, want *corev1.Service) error {
	ports := slices.Clone(want.Spec.Ports)
	for i := range ports {
		for _, old := range cur.Spec.Ports {
			if old.Name == ports[i].Name && old.Protocol == ports[i].Protocol {
				ports[i].NodePort = old.NodePort
			}
		}
	}
	if apiequality.Semantic.DeepEqual(cur.Spec.Ports, ports) && len(cur.Spec.Selector) == 0 {
		return nil
	}
	base := cur.DeepCopy()
	cur.Spec.Ports = ports
	cur.Spec.Selector = nil
	if err := r.Patch(ctx, cur, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("failed to update Service %s: %w", klog.KObj(cur), err)
	}
	ctrl.LoggerFrom(ctx).Info("Updated Service", "Service", klog.KObj(cur))
	return nil
}

// removeService deletes the Service and EndpointSlices the Sandbox
// controls, once it publishes no ports.
func (r *SandboxReconciler) removeService(ctx context.Context, sbx *sandboxv1alpha1.Sandbox) error {
	errs := []error{r.syncEndpointSlices(ctx, sbx, nil)}
	cur := &corev1.Service{}
	switch err := r.Get(ctx, types.NamespacedName{Namespace: sbx.Namespace, Name: sbx.Name}, cur); {
	case apierrors.IsNotFound(err):
	case err != nil:
		errs = append(errs, fmt.Errorf("failed to get Service %s: %w", klog.KObj(cur), err))
	case metav1.IsControlledBy(cur, sbx):
		if err := r.Delete(ctx, cur, client.Preconditions{UID: &cur.UID}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("failed to delete Service %s: %w", klog.KObj(cur), err))
		} else {
			ctrl.LoggerFrom(ctx).Info("Deleted Service", "Service", klog.KObj(cur))
		}
	}
	return errors.Join(errs...)
}

// syncEndpointSlices makes the EndpointSlices the Sandbox controls exactly
// want: one create, patch or delete per slice that differs.
func (r *SandboxReconciler) syncEndpointSlices(ctx context.Context, sbx *sandboxv1alpha1.Sandbox, want []*discoveryv1.EndpointSlice) error {
	var list discoveryv1.EndpointSliceList
	if err := r.List(ctx, &list, client.InNamespace(sbx.Namespace), client.MatchingLabels{
		discoveryv1.LabelServiceName: sbx.Name,
		discoveryv1.LabelManagedBy:   EndpointSliceManagedBy,
	}); err != nil {
		return fmt.Errorf("failed to list EndpointSlices of Sandbox %s: %w", klog.KObj(sbx), err)
	}
	have := map[string]*discoveryv1.EndpointSlice{}
	for i := range list.Items {
		if metav1.IsControlledBy(&list.Items[i], sbx) {
			have[list.Items[i].Name] = &list.Items[i]
		}
	}
	log := ctrl.LoggerFrom(ctx)
	var errs []error
	for _, w := range want {
		cur, ok := have[w.Name]
		delete(have, w.Name)
		switch {
		case !ok:
			if err := r.Create(ctx, w); err != nil && !apierrors.IsAlreadyExists(err) {
				errs = append(errs, fmt.Errorf("failed to create EndpointSlice %s: %w", klog.KObj(w), err))
			} else if err == nil {
				log.V(4).Info("Created EndpointSlice", "EndpointSlice", klog.KObj(w))
			}
		case cur.AddressType == w.AddressType &&
			apiequality.Semantic.DeepEqual(cur.Endpoints, w.Endpoints) &&
			apiequality.Semantic.DeepEqual(cur.Ports, w.Ports):
		default:
			base := cur.DeepCopy()
			cur.Endpoints, cur.Ports = w.Endpoints, w.Ports
			if err := r.Patch(ctx, cur, client.MergeFrom(base)); err != nil {
				errs = append(errs, fmt.Errorf("failed to update EndpointSlice %s: %w", klog.KObj(cur), err))
			} else {
				log.V(4).Info("Updated EndpointSlice", "EndpointSlice", klog.KObj(cur))
			}
		}
	}
	for _, stale := range have {
		if err := r.Delete(ctx, stale, client.Preconditions{UID: &stale.UID}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("failed to delete EndpointSlice %s: %w", klog.KObj(stale), err))
		} else {
			log.V(4).Info("Deleted EndpointSlice", "EndpointSlice", klog.KObj(stale))
		}
	}
	return errors.Join(errs...)
}

// sandboxNodeOf reads a SandboxNode from the cache; nil when name is empty
// or the node is gone.
func (r *SandboxReconciler) sandboxNodeOf(ctx context.Context, name string) (*sandboxv1alpha1.SandboxNode, error) {
	if name == "" {
		return nil, nil
	}
	sn := &sandboxv1alpha1.SandboxNode{}
	if err := r.Get(ctx, types.NamespacedName{Name: name}, sn); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("failed to get SandboxNode %s: %w", name, err)
	}
	return sn, nil
}

// sandboxForService maps a Service event to the Sandbox of the same name,
// if there is one: the Sandbox's own Service changed, or a foreign one that
// blocked it changed or went away.
func (r *SandboxReconciler) sandboxForService(ctx context.Context, o client.Object) []reconcile.Request {
	key := client.ObjectKeyFromObject(o)
	if err := r.Get(ctx, key, &sandboxv1alpha1.Sandbox{}); err != nil {
		return nil
	}
	return []reconcile.Request{{NamespacedName: key}}
}

// publishedPorts returns the ports a Sandbox publishes: none when its
// network is disabled.
func publishedPorts(sbx *sandboxv1alpha1.Sandbox) []sandboxv1alpha1.PublishedPort {
	n := sbx.Spec.Network
	if n == nil || (n.Enabled != nil && !*n.Enabled) {
		return nil
	}
	return n.Ports
}

func portProtocol(p sandboxv1alpha1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return corev1.Protocol(p)
}

// servicePortName is a published port's name in the Service and the
// EndpointSlices: its own name, or "<protocol>-<guestPort>" ("tcp-8080").
func servicePortName(p sandboxv1alpha1.PublishedPort) string {
	if p.Name != "" {
		return p.Name
	}
	return strings.ToLower(string(portProtocol(p.Protocol))) + "-" + strconv.Itoa(int(p.GuestPort))
}

// ownerRef makes the Sandbox the controller of an object it publishes.
func ownerRef(sbx *sandboxv1alpha1.Sandbox) metav1.OwnerReference {
	return *metav1.NewControllerRef(sbx, sandboxv1alpha1.GroupVersion.WithKind("Sandbox"))
}

// desiredService is the Sandbox's Service: selectorless (the manager keeps
// its EndpointSlices), named after the Sandbox, one port per published port
// (port = guestPort, targetPort = hostPort). Nil when no ports are
// published; errInvalidService when none can be made.
func desiredService(sbx *sandboxv1alpha1.Sandbox) (*corev1.Service, error) {
	published := publishedPorts(sbx)
	if len(published) == 0 {
		return nil, nil
	}
	if errs := validation.IsDNS1035Label(sbx.Name); len(errs) > 0 {
		return nil, fmt.Errorf("%w: the Sandbox's name is not a valid Service name: %s", errInvalidService, strings.Join(errs, "; "))
	}
	ports := make([]corev1.ServicePort, 0, len(published))
	seen := map[string]bool{}
	for _, p := range published {
		name := servicePortName(p)
		if errs := validation.IsValidPortName(name); len(errs) > 0 {
			return nil, fmt.Errorf("%w: port name %q of guest port %d: %s", errInvalidService, name, p.GuestPort, strings.Join(errs, "; "))
		}
		if seen[name] {
			return nil, fmt.Errorf("%w: two published ports are named %q in the Service", errInvalidService, name)
		}
		seen[name] = true
		ports = append(ports, corev1.ServicePort{
			Name:       name,
			Protocol:   portProtocol(p.Protocol),
			Port:       p.GuestPort,
			TargetPort: intstr.FromInt32(p.HostPort),
		})
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:       sbx.Namespace,
			Name:            sbx.Name,
			OwnerReferences: []metav1.OwnerReference{ownerRef(sbx)},
		},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Ports: ports},
	}, nil
}

// desiredEndpointSlices are the EndpointSlices of the Sandbox's Service: one
// per node address its ports are reachable at (an EndpointSlice has one
// address type, and its ports apply to all of its endpoints, so ports bound
// to different addresses need different slices). Each holds one endpoint on
// status.nodeName, ready exactly in phase Running, and the ports reachable
// there (port = hostPort, named as in the Service).
//
// A port is taken from status.ports, which the node agent writes once it
// listens: bound to 0.0.0.0 or ::, it is reached at the node's InternalIP of
// that family; bound to another address, at that address. Loopback,
// link-local and multicast binds are not reachable from other nodes (the
// API server rejects such endpoint addresses anyway), nor is a wildcard bind
// on a node that reports no address of its family: those ports are left
// out, and unreachable says why, one entry per port.
func desiredEndpointSlices(sbx *sandboxv1alpha1.Sandbox, st *sandboxv1alpha1.SandboxStatus, node *sandboxv1alpha1.SandboxNode) (want []*discoveryv1.EndpointSlice, unreachable []string) {
	if st.NodeName == "" {
		return nil, nil
	}
	type portKey struct {
		guest int32
		proto corev1.Protocol
	}
	bound := map[portKey]sandboxv1alpha1.PortStatus{}
	for _, p := range st.Ports {
		bound[portKey{p.GuestPort, portProtocol(p.Protocol)}] = p
	}
	byAddr := map[netip.Addr][]discoveryv1.EndpointPort{}
	for _, p := range publishedPorts(sbx) {
		ps, ok := bound[portKey{p.GuestPort, portProtocol(p.Protocol)}]
		if !ok {
			continue // not listening yet
		}
		addr, why := reachableAt(ps.HostIP, node)
		if why != "" {
			unreachable = append(unreachable, fmt.Sprintf("guest port %d/%s %s", p.GuestPort, portProtocol(p.Protocol), why))
			continue
		}
		byAddr[addr] = append(byAddr[addr], discoveryv1.EndpointPort{
			Name:     ptr.To(servicePortName(p)),
			Protocol: ptr.To(portProtocol(p.Protocol)),
			Port:     ptr.To(ps.HostPort),
		})
	}
	addrs := make([]netip.Addr, 0, len(byAddr))
	for a := range byAddr {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	running := st.Phase == sandboxv1alpha1.PhaseRunning
	for _, a := range addrs {
		addrType := discoveryv1.AddressTypeIPv4
		if a.Is6() {
			addrType = discoveryv1.AddressTypeIPv6
		}
		want = append(want, &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: sbx.Namespace,
				Name:      endpointSliceName(sbx.Name, a),
				Labels: map[string]string{
					discoveryv1.LabelServiceName: sbx.Name,
					discoveryv1.LabelManagedBy:   EndpointSliceManagedBy,
				},
				OwnerReferences: []metav1.OwnerReference{ownerRef(sbx)},
			},
			AddressType: addrType,
			Endpoints: []discoveryv1.Endpoint{{
				Addresses: []string{a.String()},
				Conditions: discoveryv1.EndpointConditions{
					Ready:       ptr.To(running),
					Serving:     ptr.To(running),
					Terminating: ptr.To(false),
				},
				NodeName: ptr.To(st.NodeName),
			}},
			Ports: byAddr[a],
		})
	}
	return want, unreachable
}

// reachableAt is the address other nodes reach a port bound to hostIP at,
// or why there is none.
func reachableAt(hostIP string, node *sandboxv1alpha1.SandboxNode) (netip.Addr, string) {
	ip, err := netip.ParseAddr(hostIP)
	if err != nil {
		return netip.Addr{}, fmt.Sprintf("binds %q, not an IP address", hostIP)
	}
	ip = ip.Unmap()
	switch {
	case ip.IsUnspecified():
		family := "IPv4"
		if ip.Is6() {
			family = "IPv6"
		}
		if a, ok := nodeInternalIP(node, ip.Is6()); ok {
			return a, ""
		}
		return netip.Addr{}, fmt.Sprintf("binds %s and the node reports no %s InternalIP", ip, family)
	case ip.IsLoopback():
		return netip.Addr{}, fmt.Sprintf("binds %s, reachable from the node only", ip)
	case ip.IsLinkLocalUnicast(), ip.IsMulticast(), ip.Zone() != "":
		return netip.Addr{}, fmt.Sprintf("binds %s, a link-local or multicast address", ip)
	}
	return ip, ""
}

// nodeInternalIP is the node's first reported InternalIP of a family.
func nodeInternalIP(node *sandboxv1alpha1.SandboxNode, v6 bool) (netip.Addr, bool) {
	if node == nil {
		return netip.Addr{}, false
	}
	for _, na := range node.Status.Addresses {
		if na.Type != corev1.NodeInternalIP {
			continue
		}
		a, err := netip.ParseAddr(na.Address)
		if err != nil {
			continue
		}
		a = a.Unmap()
		if a.Is6() == v6 && !a.IsUnspecified() && !a.IsLoopback() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// endpointSliceName is "<sandbox>-<hash of the address>": stable for an
// address, and short enough for any Service name (at most 63 + 9 characters).
func endpointSliceName(sandbox string, a netip.Addr) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(a.String()))
	return fmt.Sprintf("%s-%08x", sandbox, h.Sum32())
}
