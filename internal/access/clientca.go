package access

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ClientCAName names the Secret that holds the access client CA (its key:
// only the manager may read it) and the ConfigMap that publishes its
// certificate to the node agents, which admit only clients it signed.
const ClientCAName = "sandbox-access-client-ca"

// ClientCACertKey is the ConfigMap key of the CA certificate.
const ClientCACertKey = "ca.crt"

// clientCAValidity is the CA's lifetime; the manager's client certificate
// is issued from it at every start, for clientCertValidity, and renewed after two
// thirds of it (RotatingCert).
const (
	clientCAValidity   = 10 * 365 * 24 * time.Hour
	clientCertValidity = 365 * 24 * time.Hour
)

// EnsureClientCA loads the access client CA from its Secret in namespace,
// creating it on first use, and publishes its certificate in the ConfigMap
// of the same name. Managers racing to create it agree on the first one
// stored.
func EnsureClientCA(ctx context.Context, c client.Client, namespace string) (*CA, error) {
	key := client.ObjectKey{Namespace: namespace, Name: ClientCAName}
	ca, err := ensureStoredCA(ctx, c, key, "sandbox-access-client-ca")
	if err != nil {
		return nil, fmt.Errorf("the access client CA: %w", err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ClientCAName, Namespace: namespace}}
	err = c.Get(ctx, key, cm)
	switch {
	case apierrors.IsNotFound(err):
		cm.Data = map[string]string{ClientCACertKey: string(ca.CertPEM)}
		err = c.Create(ctx, cm)
	case err == nil && cm.Data[ClientCACertKey] != string(ca.CertPEM):
		cm.Data = map[string]string{ClientCACertKey: string(ca.CertPEM)}
		err = c.Update(ctx, cm)
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("publishing the access client CA in ConfigMap %s: %w", key, err)
	}
	return ca, nil
}

// ManagerClientCert issues the manager's client certificate for the node
// agents' access servers.
func (ca *CA) ManagerClientCert() (KeyPair, error) {
	return ca.IssueClient("sandbox-manager", []string{"sandbox.microvm.dev:manager"}, clientCertValidity)
}

// ParseCA loads a CA from its PEM certificate and EC private key.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("not a PEM certificate and key")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("the key does not match the certificate")
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM}, nil
}

// ServingCAName names the Secret that holds the access API's serving CA:
// every manager replica issues its serving certificate from it, so that the
// APIService's caBundle (one CA) verifies all of them.
const ServingCAName = "sandbox-access-serving-ca"

// EnsureServingCA loads the access API's serving CA from its Secret in
// namespace, creating it on first use. Replicas racing to create it agree
// on the first one stored.
func EnsureServingCA(ctx context.Context, c client.Client, namespace string) (*CA, error) {
	ca, err := ensureStoredCA(ctx, c, client.ObjectKey{Namespace: namespace, Name: ServingCAName}, "sandbox-access-serving-ca")
	if err != nil {
		return nil, fmt.Errorf("the access serving CA: %w", err)
	}
	return ca, nil
}

// ensureStoredCA loads the CA kept in the kubernetes.io/tls Secret key,
// creating it (named cn) when there is none; when two processes race, the
// first stored wins and both use it.
func ensureStoredCA(ctx context.Context, c client.Client, key client.ObjectKey, cn string) (*CA, error) {
	sec := &corev1.Secret{}
	err := c.Get(ctx, key, sec)
	if apierrors.IsNotFound(err) {
		ca, nerr := NewCA(cn, clientCAValidity)
		if nerr != nil {
			return nil, nerr
		}
		keyDER, merr := x509.MarshalECPrivateKey(ca.Key)
		if merr != nil {
			return nil, merr
		}
		sec = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace},
			Type:       corev1.SecretTypeTLS,
			Data: map[string][]byte{
				corev1.TLSCertKey:       ca.CertPEM,
				corev1.TLSPrivateKeyKey: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
			},
		}
		err = c.Create(ctx, sec)
		if apierrors.IsAlreadyExists(err) {
			err = c.Get(ctx, key, sec)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("loading Secret %s: %w", key, err)
	}
	ca, err := ParseCA(sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, fmt.Errorf("parsing Secret %s: %w", key, err)
	}
	return ca, nil
}
