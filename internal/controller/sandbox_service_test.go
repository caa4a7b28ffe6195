package controller

import (
	"net/netip"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

func portsSandbox(name string, ports ...sandboxv1alpha1.PublishedPort) *sandboxv1alpha1.Sandbox {
	return &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: "uid-1"},
		Spec:       sandboxv1alpha1.SandboxSpec{Network: &sandboxv1alpha1.NetworkSpec{Ports: ports}},
	}
}

func tcp(guest, host int32) sandboxv1alpha1.PublishedPort {
	return sandboxv1alpha1.PublishedPort{GuestPort: guest, HostPort: host, Protocol: sandboxv1alpha1.ProtocolTCP}
}

func TestDesiredService(t *testing.T) {
	named := tcp(80, 8080)
	named.Name = "http"
	udp := sandboxv1alpha1.PublishedPort{GuestPort: 53, HostPort: 5353, Protocol: sandboxv1alpha1.ProtocolUDP}
	clash := sandboxv1alpha1.PublishedPort{Name: "tcp-80", GuestPort: 81, HostPort: 8081, Protocol: sandboxv1alpha1.ProtocolTCP}
	numeric := tcp(90, 9090)
	numeric.Name = "90"
	tests := []struct {
		name      string
		sbx       *sandboxv1alpha1.Sandbox
		wantPorts []corev1.ServicePort
		wantNil   bool
		wantErr   string
	}{
		{name: "no network means no Service", sbx: &sandboxv1alpha1.Sandbox{ObjectMeta: metav1.ObjectMeta{Name: "a"}}, wantNil: true},
		{name: "no ports means no Service", sbx: portsSandbox("a"), wantNil: true},
		{name: "a disabled network means no Service", sbx: func() *sandboxv1alpha1.Sandbox {
			s := portsSandbox("a", tcp(80, 8080))
			s.Spec.Network.Enabled = ptr.To(false)
			return s
		}(), wantNil: true},
		{name: "ports map guestPort to port and hostPort to targetPort, named or <protocol>-<guestPort>",
			sbx: portsSandbox("web", named, udp, tcp(9000, 9001)),
			wantPorts: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)},
				{Name: "udp-53", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(5353)},
				{Name: "tcp-9000", Protocol: corev1.ProtocolTCP, Port: 9000, TargetPort: intstr.FromInt32(9001)},
			}},
		{name: "an unset protocol is TCP", sbx: portsSandbox("web", sandboxv1alpha1.PublishedPort{GuestPort: 22, HostPort: 2222}),
			wantPorts: []corev1.ServicePort{{Name: "tcp-22", Protocol: corev1.ProtocolTCP, Port: 22, TargetPort: intstr.FromInt32(2222)}}},
		{name: "a Sandbox name that is no DNS-1035 label is invalid", sbx: portsSandbox("1web", tcp(80, 8080)), wantErr: "not a valid Service name"},
		{name: "a dotted Sandbox name is invalid", sbx: portsSandbox("web.a", tcp(80, 8080)), wantErr: "not a valid Service name"},
		{name: "two ports with one Service port name are invalid", sbx: portsSandbox("web", tcp(80, 8080), clash), wantErr: `two published ports are named "tcp-80"`},
		{name: "a port name without a letter is invalid", sbx: portsSandbox("web", numeric), wantErr: `port name "90"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			svc, err := desiredService(tt.sbx)
			if tt.wantErr != "" {
				g.Expect(err).To(MatchError(errInvalidService))
				g.Expect(err).To(MatchError(ContainSubstring(tt.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			if tt.wantNil {
				g.Expect(svc).To(BeNil())
				return
			}
			g.Expect(svc.Name).To(Equal(tt.sbx.Name))
			g.Expect(svc.Namespace).To(Equal(tt.sbx.Namespace))
			g.Expect(svc.Spec.Selector).To(BeEmpty())
			g.Expect(svc.Spec.Type).To(Equal(corev1.ServiceTypeClusterIP))
			g.Expect(svc.Spec.Ports).To(Equal(tt.wantPorts))
			g.Expect(svc.OwnerReferences).To(HaveLen(1))
			g.Expect(svc.OwnerReferences[0].UID).To(Equal(tt.sbx.UID))
			g.Expect(*svc.OwnerReferences[0].Controller).To(BeTrue())
		})
	}
}

// sliceView is what a test compares of a desired EndpointSlice.
type sliceView struct {
	addressType discoveryv1.AddressType
	address     string
	ready       bool
	ports       map[string]int32 // name → port
}

func viewOf(s *discoveryv1.EndpointSlice) sliceView {
	v := sliceView{addressType: s.AddressType, ports: map[string]int32{}}
	if len(s.Endpoints) == 1 {
		v.address = s.Endpoints[0].Addresses[0]
		v.ready = *s.Endpoints[0].Conditions.Ready
	}
	for _, p := range s.Ports {
		v.ports[*p.Name] = *p.Port
	}
	return v
}

func TestDesiredEndpointSlices(t *testing.T) {
	node := &sandboxv1alpha1.SandboxNode{Status: sandboxv1alpha1.SandboxNodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeHostName, Address: "node-a"},
		{Type: corev1.NodeInternalIP, Address: "10.0.0.5"},
		{Type: corev1.NodeInternalIP, Address: "fd00::5"},
	}}}
	v4only := &sandboxv1alpha1.SandboxNode{Status: sandboxv1alpha1.SandboxNodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "10.0.0.5"},
	}}}
	sbx := portsSandbox("web", tcp(80, 8080), tcp(443, 8443), tcp(9000, 9000),
		sandboxv1alpha1.PublishedPort{Name: "dns", GuestPort: 53, HostPort: 5353, Protocol: sandboxv1alpha1.ProtocolUDP})
	bound := func(guest int32, proto sandboxv1alpha1.Protocol, ip string, host int32) sandboxv1alpha1.PortStatus {
		return sandboxv1alpha1.PortStatus{GuestPort: guest, Protocol: proto, HostIP: ip, HostPort: host}
	}
	running := func(ports ...sandboxv1alpha1.PortStatus) *sandboxv1alpha1.SandboxStatus {
		return &sandboxv1alpha1.SandboxStatus{NodeName: "node-a", Phase: sandboxv1alpha1.PhaseRunning, Ports: ports}
	}
	tests := []struct {
		name            string
		st              *sandboxv1alpha1.SandboxStatus
		node            *sandboxv1alpha1.SandboxNode
		want            []sliceView
		wantUnreachable []string
	}{
		{name: "an unplaced sandbox has no endpoints", st: &sandboxv1alpha1.SandboxStatus{Phase: sandboxv1alpha1.PhaseCreated}, node: node},
		{name: "ports the agent does not report yet are left out", st: running(), node: node},
		{name: "a wildcard bind is reached at the node's InternalIP, a loopback bind not at all",
			st:              running(bound(80, "TCP", "0.0.0.0", 8080), bound(443, "TCP", "127.0.0.1", 8443)),
			node:            node,
			want:            []sliceView{{addressType: discoveryv1.AddressTypeIPv4, address: "10.0.0.5", ready: true, ports: map[string]int32{"tcp-80": 8080}}},
			wantUnreachable: []string{"guest port 443/TCP binds 127.0.0.1, reachable from the node only"}},
		{name: "endpoints are not ready outside phase Running",
			st: &sandboxv1alpha1.SandboxStatus{NodeName: "node-a", Phase: sandboxv1alpha1.PhaseDraining,
				Ports: []sandboxv1alpha1.PortStatus{bound(80, "TCP", "0.0.0.0", 8080)}},
			node: node,
			want: []sliceView{{addressType: discoveryv1.AddressTypeIPv4, address: "10.0.0.5", ports: map[string]int32{"tcp-80": 8080}}}},
		{name: "ports bound to different addresses get one slice per address, sorted",
			st: running(bound(80, "TCP", "0.0.0.0", 8080), bound(443, "TCP", "192.168.1.7", 8443),
				bound(9000, "TCP", "::", 9000), bound(53, "UDP", "0.0.0.0", 5353)),
			node: node,
			want: []sliceView{
				{addressType: discoveryv1.AddressTypeIPv4, address: "10.0.0.5", ready: true, ports: map[string]int32{"tcp-80": 8080, "dns": 5353}},
				{addressType: discoveryv1.AddressTypeIPv4, address: "192.168.1.7", ready: true, ports: map[string]int32{"tcp-443": 8443}},
				{addressType: discoveryv1.AddressTypeIPv6, address: "fd00::5", ready: true, ports: map[string]int32{"tcp-9000": 9000}},
			}},
		{name: "a wildcard bind without a node address of its family is unreachable",
			st:              running(bound(9000, "TCP", "::", 9000)),
			node:            v4only,
			wantUnreachable: []string{"guest port 9000/TCP binds :: and the node reports no IPv6 InternalIP"}},
		{name: "a node that reports no addresses makes wildcard binds unreachable (no guessing)",
			st:              running(bound(80, "TCP", "0.0.0.0", 8080)),
			node:            &sandboxv1alpha1.SandboxNode{},
			wantUnreachable: []string{"guest port 80/TCP binds 0.0.0.0 and the node reports no IPv4 InternalIP"}},
		{name: "a link-local bind is unreachable",
			st:              running(bound(80, "TCP", "169.254.1.1", 8080)),
			node:            node,
			wantUnreachable: []string{"guest port 80/TCP binds 169.254.1.1, a link-local or multicast address"}},
		{name: "a port the spec no longer publishes is left out",
			st:   running(bound(8888, "TCP", "0.0.0.0", 8888)),
			node: node},
		{name: "a protocol mismatch is another port",
			st:   running(bound(80, "UDP", "0.0.0.0", 8080)),
			node: node},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			got, unreachable := desiredEndpointSlices(sbx, tt.st, tt.node)
			views := make([]sliceView, 0, len(got))
			for _, s := range got {
				views = append(views, viewOf(s))
				g.Expect(s.Namespace).To(Equal("ns"))
				g.Expect(s.Labels).To(Equal(map[string]string{
					discoveryv1.LabelServiceName: "web",
					discoveryv1.LabelManagedBy:   EndpointSliceManagedBy,
				}))
				g.Expect(s.Endpoints).To(HaveLen(1))
				g.Expect(s.Endpoints[0].NodeName).To(Equal(ptr.To("node-a")))
				g.Expect(s.OwnerReferences).To(HaveLen(1))
				g.Expect(*s.OwnerReferences[0].Controller).To(BeTrue())
			}
			if tt.want == nil {
				g.Expect(views).To(BeEmpty())
			} else {
				g.Expect(views).To(Equal(tt.want))
			}
			g.Expect(unreachable).To(Equal(tt.wantUnreachable))
		})
	}
}

func TestEndpointSliceName(t *testing.T) {
	g := NewWithT(t)
	a := endpointSliceName("web", netip.MustParseAddr("10.0.0.5"))
	g.Expect(a).To(MatchRegexp(`^web-[0-9a-f]{8}$`))
	g.Expect(endpointSliceName("web", netip.MustParseAddr("10.0.0.5"))).To(Equal(a), "stable for an address")
	g.Expect(endpointSliceName("web", netip.MustParseAddr("10.0.0.6"))).NotTo(Equal(a), "different per address")
}
