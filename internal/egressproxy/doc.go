// Package egressproxy keeps a sandbox's secrets out of its VM: the guest's
// environment holds only a placeholder, and the node substitutes the real
// value into the guest's HTTP requests on their way out — only for the hosts
// the secret allows.
//
// The node's network stack (internal/netstack) hands a guest TCP connection
// that its egress policy already allowed to Proxy.Handle when
// Proxy.Intercepts says so. Handle looks at the guest's first bytes:
//
//   - TLS: the proxy terminates it with a leaf certificate for the
//     ClientHello's server name (SNI), issued by the sandbox's CA that the
//     guest trusts, and opens its own TLS connection to the destination with
//     the same server name, verified against RootCAs. A guest cannot claim an
//     allowed name while connecting to another server: that server would have
//     to present a trusted certificate for the name. A secret is substituted
//     only when the SNI matches its allowed hosts and the request's Host
//     equals the SNI.
//   - Plain HTTP: the Host header is the guest's word alone, so a secret is
//     substituted only when the Host matches its allowed hosts and the
//     destination address is one the sandbox's resolver answered for that
//     very name (Proxy.NamesOf). The request still crosses the network in
//     the clear: allowing a secret to a plain-HTTP host exposes it on the
//     path.
//   - Anything else is spliced unchanged: no substitution is possible, and
//     none is needed, since the guest never had the value.
//
// Requests are proxied one by one as HTTP/1.1 (keep-alive, 1xx responses,
// protocol upgrades such as WebSocket and CONNECT tunnels, which are spliced
// after the switch). A request that carries the placeholder of a secret not
// allowed for its host is not forwarded: the guest gets 403 with a plain-text
// body naming the secret's environment variable (never its value), the
// connection is closed, and OnViolation reports it.
//
// What the proxy does not do:
//   - HTTP/2: the guest is offered only http/1.1 through ALPN; a guest that
//     offers only h2 (gRPC, for instance) is spliced unchanged, so its
//     placeholders are neither substituted nor reported.
//   - Bodies are substituted only when the secret asks for it and the whole
//     body (fixed-length or chunked) is at most MaxBody bytes; compressed
//     (Content-Encoding) bodies are not decoded. Longer bodies pass
//     unchanged.
//   - Nothing inside an upgraded connection (WebSocket frames) or a CONNECT
//     tunnel is inspected.
//   - Responses are not modified: an upstream that echoes the secret back
//     shows it to the guest, which is outside the proxy's control.
//   - A TLS client certificate cannot be relayed through the interception,
//     and a guest that pins its servers' certificates fails on intercepted
//     ports.
package egressproxy
