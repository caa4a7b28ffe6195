package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NetworkSpec configures the guest's network (microsandbox's NetworkSpec).
// Every guest flow is terminated on the node by a userspace network stack
// that applies the egress policy before it opens a host socket.
// +kubebuilder:validation:XValidation:rule="!has(self.enabled) || self.enabled || (!has(self.ports) && !has(self.policy) && !has(self.dns) && !has(self.secrets) && !has(self.trustHostCAs))",message="ports, policy, dns, secrets and trustHostCAs require the network to be enabled"
type NetworkSpec struct {
	// enabled gives the guest a network interface. Default true; false means
	// no NIC at all.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// ports publishes guest ports on the node. Each (guestPort, protocol)
	// and each (hostPort, protocol) appears at most once.
	// +optional
	// +listType=map
	// +listMapKey=guestPort
	// +listMapKey=protocol
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:XValidation:rule="self.all(p, self.exists_one(q, q.hostPort == p.hostPort && q.protocol == p.protocol))",message="each hostPort may be published once per protocol"
	Ports []PublishedPort `json:"ports,omitempty"`

	// policy is the egress policy. Unset means the "public" profile: the
	// public internet and DNS, but no private ranges, loopback, link-local,
	// cloud metadata, multicast or the node itself.
	// +optional
	Policy *NetworkPolicy `json:"policy,omitempty"`

	// dns configures the guest's resolver (served by the node). Unset means
	// the node's resolvers with rebinding protection.
	// +optional
	DNS *DNSConfig `json:"dns,omitempty"`

	// secrets are values that never enter the VM: the guest sees only a
	// placeholder, which the node's egress proxy replaces with the real value
	// in requests to the allowed hosts. Each envVar appears at most once.
	// +optional
	// +listType=map
	// +listMapKey=envVar
	// +kubebuilder:validation:MaxItems=32
	Secrets []NetworkSecret `json:"secrets,omitempty"`

	// trustHostCAs copies the node's trusted root certificates into the
	// guest's trust store. Default false.
	// +optional
	TrustHostCAs bool `json:"trustHostCAs,omitempty"`
}

// Protocol is a transport protocol.
// +kubebuilder:validation:Enum=TCP;UDP
type Protocol string

const (
	// ProtocolTCP is TCP.
	ProtocolTCP Protocol = "TCP"
	// ProtocolUDP is UDP.
	ProtocolUDP Protocol = "UDP"
)

// PublishedPort forwards a port on the node into the guest.
type PublishedPort struct {
	// name is an optional IANA service name for the port, used in the
	// Sandbox's Service.
	// +optional
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name,omitempty"`

	// guestPort is the port the guest listens on.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	GuestPort int32 `json:"guestPort"`

	// hostPort is the port opened on the node.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	HostPort int32 `json:"hostPort"`

	// protocol is TCP (the default) or UDP.
	// +optional
	// +kubebuilder:default=TCP
	Protocol Protocol `json:"protocol,omitempty"`

	// hostIP is the node address the port binds to. Default 127.0.0.1
	// (reachable from the node only); "0.0.0.0" must be explicit.
	// +optional
	// +kubebuilder:default="127.0.0.1"
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="must be an IPv4 or IPv6 address"
	HostIP string `json:"hostIP,omitempty"`
}

// PolicyAction allows or denies a flow.
// +kubebuilder:validation:Enum=Allow;Deny
type PolicyAction string

const (
	// PolicyAllow lets the flow through.
	PolicyAllow PolicyAction = "Allow"
	// PolicyDeny drops the flow.
	PolicyDeny PolicyAction = "Deny"
)

// NetworkPolicy is an ordered list of egress rules; the first match wins.
type NetworkPolicy struct {
	// defaultEgress applies to flows that match no rule. Default Deny.
	// +optional
	// +kubebuilder:default=Deny
	DefaultEgress PolicyAction `json:"defaultEgress,omitempty"`

	// rules are matched in order; the first match decides.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=128
	Rules []NetworkRule `json:"rules,omitempty"`
}

// NetworkRule matches egress flows by destination, protocol and port.
type NetworkRule struct {
	// action is Allow or Deny.
	// +required
	Action PolicyAction `json:"action"`

	// destination is what the flow goes to.
	// +required
	Destination NetworkDestination `json:"destination"`

	// protocols the rule matches. Empty means any.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=3
	Protocols []RuleProtocol `json:"protocols,omitempty"`

	// ports the rule matches. Empty means any.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Ports []PortRange `json:"ports,omitempty"`
}

// RuleProtocol is a protocol a network rule can match.
// +kubebuilder:validation:Enum=TCP;UDP;ICMP
type RuleProtocol string

// DestinationGroup is a named set of addresses.
// +kubebuilder:validation:Enum=Public;Private;Loopback;LinkLocal;Metadata;Multicast;Host
type DestinationGroup string

// NetworkDestination is one of a CIDR, a domain, a domain suffix or a group.
// +kubebuilder:validation:XValidation:rule="[has(self.cidr), has(self.domain), has(self.domainSuffix), has(self.group)].filter(x, x).size() == 1",message="set exactly one of cidr, domain, domainSuffix or group"
type NetworkDestination struct {
	// cidr is an IPv4 or IPv6 network, e.g. 10.0.0.0/8.
	// +optional
	// +kubebuilder:validation:MaxLength=49
	// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="must be a CIDR such as 10.0.0.0/8"
	CIDR string `json:"cidr,omitempty"`

	// domain is an exact DNS name, e.g. api.example.com.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$`
	Domain string `json:"domain,omitempty"`

	// domainSuffix matches a name and all names under it, e.g.
	// .example.com.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^\.?([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$`
	DomainSuffix string `json:"domainSuffix,omitempty"`

	// group is a named address set: Public, Private, Loopback, LinkLocal,
	// Metadata (169.254.169.254), Multicast or Host (the node itself).
	// +optional
	Group DestinationGroup `json:"group,omitempty"`
}

// PortRange is an inclusive range of ports.
// +kubebuilder:validation:XValidation:rule="!has(self.end) || self.end >= self.start",message="end must not be below start"
type PortRange struct {
	// start is the first port.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Start int32 `json:"start"`

	// end is the last port. Unset means start alone.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	End *int32 `json:"end,omitempty"`
}

// DNSConfig configures the resolver the node serves to the guest.
type DNSConfig struct {
	// nameservers are upstream resolvers, "IP" or "IP:port", tried in order.
	// Empty means the node's resolvers.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=3
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.all(n, isIP(n) || (n.contains(':') && isIP(n.substring(0, n.lastIndexOf(':')).replace('[', '').replace(']', '')) && n.substring(n.lastIndexOf(':') + 1).matches('^[0-9]{1,5}$') && int(n.substring(n.lastIndexOf(':') + 1)) >= 1 && int(n.substring(n.lastIndexOf(':') + 1)) <= 65535))",message="each nameserver must be an IP address, optionally with :port (1-65535)"
	Nameservers []string `json:"nameservers,omitempty"`

	// rebindProtection drops answers that point public names at private,
	// loopback or link-local addresses unless a rule allows them. Default true.
	// +optional
	// +kubebuilder:default=true
	RebindProtection *bool `json:"rebindProtection,omitempty"`

	// queryTimeoutMillis bounds one upstream query. Default 5000.
	// +optional
	// +kubebuilder:default=5000
	// +kubebuilder:validation:Minimum=100
	// +kubebuilder:validation:Maximum=60000
	QueryTimeoutMillis int32 `json:"queryTimeoutMillis,omitempty"`
}

// SecretViolationAction is what happens when a placeholder is sent to a
// host that is not allowed.
// +kubebuilder:validation:Enum=Block;BlockAndLog;BlockAndTerminate
type SecretViolationAction string

const (
	// SecretViolationBlock refuses the request (403 to the guest) and
	// counts it in status.network and the agent's metrics.
	SecretViolationBlock SecretViolationAction = "Block"
	// SecretViolationBlockAndLog also records a Warning event
	// SecretBlocked on the Sandbox (at most one per secret every 10 s).
	SecretViolationBlockAndLog SecretViolationAction = "BlockAndLog"
	// SecretViolationBlockAndTerminate also stops the sandbox, with
	// terminationReason PolicyViolation.
	SecretViolationBlockAndTerminate SecretViolationAction = "BlockAndTerminate"
)

// NetworkSecret is a secret value substituted by the node's egress proxy.
type NetworkSecret struct {
	// envVar is the guest environment variable that holds the placeholder.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	EnvVar string `json:"envVar"`

	// secretKeyRef is the Secret key that holds the real value.
	// +required
	SecretKeyRef corev1.SecretKeySelector `json:"secretKeyRef"`

	// placeholder is the value the guest sees. Unset means
	// "$SANDBOX_SECRET_<envVar>".
	// +optional
	// +kubebuilder:validation:MinLength=8
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^[^\r\n\x00]+$`
	Placeholder string `json:"placeholder,omitempty"`

	// allowedHosts are the hosts the value may be sent to: exact names or
	// "*.example.com" wildcards. At least one.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$`
	AllowedHosts []string `json:"allowedHosts"`

	// injection says where the proxy substitutes the placeholder. Unset
	// means headers and basic auth.
	// +optional
	Injection *SecretInjection `json:"injection,omitempty"`

	// onViolation is what happens when the placeholder is sent elsewhere:
	// Block (drop the request), BlockAndLog (the default; also an event) or
	// BlockAndTerminate (also stop the sandbox).
	// +optional
	// +kubebuilder:default=BlockAndLog
	OnViolation SecretViolationAction `json:"onViolation,omitempty"`
}

// SecretInjection selects the parts of an HTTP request where a secret's
// placeholder is replaced.
type SecretInjection struct {
	// headers replaces it in request headers. Default true.
	// +optional
	// +kubebuilder:default=true
	Headers *bool `json:"headers,omitempty"`
	// basicAuth replaces it in Basic authorization credentials. Default true.
	// +optional
	// +kubebuilder:default=true
	BasicAuth *bool `json:"basicAuth,omitempty"`
	// queryParams replaces it in the URL query. Default false.
	// +optional
	QueryParams bool `json:"queryParams,omitempty"`
	// body replaces it in fixed-length request bodies up to 16 MiB. Default false.
	// +optional
	Body bool `json:"body,omitempty"`
}

// NetworkReady condition (owner: node agent): whether the sandbox's network
// on the node is as its spec says while the VM runs. Set with the VM's
// start; absent before.
const (
	// ConditionNetworkReady is True when the guest's NIC is linked to the
	// node's network stack and every published port listens.
	ConditionNetworkReady = "NetworkReady"

	// ReasonNetworkConfigured (True): the stack runs; the message lists the
	// published ports.
	ReasonNetworkConfigured = "Configured"
	// ReasonNetworkDisabled (True): network.enabled is false; the guest has
	// no NIC, as asked.
	ReasonNetworkDisabled = "Disabled"
	// ReasonPortUnavailable (False): a published port could not be opened
	// on the node (in use, a hostIP the node does not have, or an
	// unsupported protocol); the message says which and why. The other
	// ports and the guest's egress work.
	ReasonPortUnavailable = "PortUnavailable"
)

// NetworkStatus is the node's account of the sandbox's network (owner: node
// agent). The counts start again when the node agent restarts.
type NetworkStatus struct {
	// deniedTotal counts what the node refused the guest: flows, DNS
	// names, DNS answers (rebinding protection) and secret placeholders
	// bound for hosts they are not allowed to.
	// +optional
	// +kubebuilder:validation:Minimum=0
	DeniedTotal int64 `json:"deniedTotal,omitempty"`

	// recentDenials are the latest denials, oldest first, at most 10.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=10
	RecentDenials []NetworkDenial `json:"recentDenials,omitempty"`
}

// NetworkDenial is one thing the node refused the guest.
type NetworkDenial struct {
	// time is when it was refused.
	// +required
	Time metav1.Time `json:"time"`

	// protocol is TCP, UDP or ICMP.
	// +required
	// +kubebuilder:validation:MaxLength=8
	Protocol string `json:"protocol"`

	// destination is the address and port, e.g. 10.0.0.5:443 (port 0
	// for a DNS answer).
	// +required
	// +kubebuilder:validation:MaxLength=64
	Destination string `json:"destination"`

	// names are the DNS names the sandbox's resolver gave for the
	// destination (or the name asked for), at most 4.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=4
	// +kubebuilder:validation:items:MaxLength=253
	Names []string `json:"names,omitempty"`

	// class is the kind of denial: rule, default, group:<group>, reserved,
	// dns, rebind or secret.
	// +required
	// +kubebuilder:validation:MaxLength=32
	Class string `json:"class"`

	// reason says why, e.g. "denied by rule 2 (domain evil.example)".
	// +required
	// +kubebuilder:validation:MaxLength=512
	Reason string `json:"reason"`
}
