package nodeagent

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/image"
)

// namespaceObjects reads Secrets and ConfigMaps of one namespace straight
// from the API server: the agent reads the few its sandboxes name when a
// run starts, so it neither caches nor watches every Secret of the cluster
// (what a kubelet's node authorizer would also refuse).
type namespaceObjects struct {
	ctx       context.Context
	reader    client.Reader
	namespace string
}

var _ objects = (*namespaceObjects)(nil)

func (o *namespaceObjects) secret(name string) (map[string][]byte, error) {
	s := &corev1.Secret{}
	if err := o.reader.Get(o.ctx, client.ObjectKey{Namespace: o.namespace, Name: name}, s); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	if s.Data == nil {
		return map[string][]byte{}, nil
	}
	return s.Data, nil
}

func (o *namespaceObjects) configMap(name string) (map[string][]byte, error) {
	cm := &corev1.ConfigMap{}
	if err := o.reader.Get(o.ctx, client.ObjectKey{Namespace: o.namespace, Name: name}, cm); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	return configMapData(cm), nil
}

// pullOptions builds the image pull options of sbx: its pull policy and
// pinned digest, the registry transport options, the CA bundle and the
// docker configs of its imagePullSecrets. A pull secret that is missing or
// of the wrong type is skipped, as the kubelet does, and named in notes so
// that a failing pull says why it had no credentials.
func pullOptions(sbx *sandboxv1alpha1.Sandbox, objs objects) (opts image.PullOptions, notes []string, err error) {
	opts = image.PullOptions{Policy: sbx.Spec.ImagePullPolicy, PinnedDigest: sbx.Status.ImageDigest}
	if reg := sbx.Spec.Registry; reg != nil {
		opts.Insecure = reg.Insecure
		if ref := reg.CABundleRef; ref != nil {
			data, err := objs.configMap(ref.Name)
			if err != nil {
				return opts, nil, fmt.Errorf("reading the CA bundle ConfigMap %q: %w", ref.Name, err)
			}
			pem, ok := data[ref.Key]
			if data == nil || !ok {
				return opts, nil, fmt.Errorf("spec.registry.caBundleRef: key %q of ConfigMap %q not found", ref.Key, ref.Name)
			}
			opts.CABundle = pem
		}
	}
	for _, ref := range sbx.Spec.ImagePullSecrets {
		data, err := objs.secret(ref.Name)
		if err != nil {
			return opts, nil, fmt.Errorf("reading the pull secret %q: %w", ref.Name, err)
		}
		if data == nil {
			notes = append(notes, fmt.Sprintf("pull secret %q not found", ref.Name))
			continue
		}
		doc, ok := data[corev1.DockerConfigJsonKey]
		if !ok {
			doc, ok = data[corev1.DockerConfigKey]
		}
		if !ok {
			notes = append(notes, fmt.Sprintf("pull secret %q has no %s or %s key", ref.Name, corev1.DockerConfigJsonKey, corev1.DockerConfigKey))
			continue
		}
		opts.Auth.DockerConfigs = append(opts.Auth.DockerConfigs, doc)
	}
	return opts, notes, nil
}
